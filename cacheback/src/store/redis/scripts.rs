//! The store's Lua scripts (`put.lua`, `claim.lua`, `release.lua` beside this file, with
//! `claim_fn.lua` in front of `put` and `claim`): the arguments each takes, and its reply
//! decoded into an enum.
//!
//! The envelope layout the `put` script needs (prefix, header length, generation offset) is
//! passed in from [`crate::entry`] on every call. The reply codes and release modes are
//! constants at the top of each script, checked against the enums here by the tests below.

use redis::{Script, ScriptInvocation, Value};

use super::layout::{claim_key, entry_key, fail_key, tag_clock_key, tag_key};
use crate::entry::{ENVELOPE_HEADER_LEN, ENVELOPE_PREFIX, GENERATION_OFFSET};
use crate::key::Key;
use crate::redis_support::{bytes_of, int_of, u64_of};
use crate::store::ClaimToken;

const PUT_LUA: &str = include_str!("put.lua");
const CLAIM_LUA: &str = include_str!("claim.lua");
const CLAIM_FN_LUA: &str = include_str!("claim_fn.lua");
const RELEASE_LUA: &str = include_str!("release.lua");
const TAG_LUA: &str = include_str!("tag.lua");

/// The loaded scripts (each is sent by SHA, and in full once per connection that lacks it).
#[derive(Clone)]
pub(super) struct Scripts {
    put: Script,
    claim: Script,
    release: Script,
    tag: Script,
}

impl Scripts {
    pub(super) fn new() -> Self {
        Scripts {
            put: Script::new(&format!("{CLAIM_FN_LUA}\n{PUT_LUA}")),
            claim: Script::new(&format!("{CLAIM_FN_LUA}\n{CLAIM_LUA}")),
            release: Script::new(RELEASE_LUA),
            tag: Script::new(TAG_LUA),
        }
    }

    /// `put`, put-and-release or put-and-claim (as `then` says): writes `envelope` if the
    /// stored generation is `expected` (any generation when `None`), and announces the write
    /// on the channel of `announce`, if given, saying whether it deletes.
    pub(super) fn put(
        &self,
        key: Key<'_>,
        expected: Option<u64>,
        envelope: Vec<u8>,
        px: u64,
        announce: Option<(&str, bool)>,
        then: AfterPut<'_>,
    ) -> ScriptInvocation<'_> {
        let mut invocation = self.put.key(entry_key(key));
        if !matches!(then, AfterPut::Nothing) {
            invocation.key(claim_key(key)).key(fail_key(key));
        }
        let expected = expected.map_or_else(Vec::new, |g| g.to_be_bytes().to_vec());
        invocation
            .arg(expected)
            .arg(envelope)
            .arg(px)
            .arg(&ENVELOPE_PREFIX[..])
            .arg(ENVELOPE_HEADER_LEN)
            .arg(GENERATION_OFFSET)
            .arg(announce.map_or("", |(channel, _)| channel))
            .arg(announcement_head(
                key,
                announce.is_some_and(|(_, deleted)| deleted),
            ));
        match then {
            AfterPut::Nothing => {}
            AfterPut::Release(token) => {
                invocation.arg(token.to_string());
            }
            AfterPut::Claim {
                token,
                now,
                until,
                px,
            } => {
                invocation
                    .arg("")
                    .arg(now)
                    .arg(until)
                    .arg(px)
                    .arg(token.to_string());
            }
        }
        invocation
    }

    /// `claim` of `keys` (in one hash slot on a cluster), one token each: times as
    /// [`time_text`](super::layout::time_text).
    pub(super) fn claim(
        &self,
        keys: &[(Key<'_>, ClaimToken)],
        now: &str,
        until: &str,
        px: u64,
    ) -> ScriptInvocation<'_> {
        let mut invocation = self.claim.prepare_invoke();
        for &(key, _) in keys {
            invocation.key(claim_key(key)).key(fail_key(key));
        }
        invocation.arg(now).arg(until).arg(px);
        for &(_, token) in keys {
            invocation.arg(token.to_string());
        }
        invocation
    }

    /// `release`: `failure` is the failure record and its PX expiry, for [`ReleaseMode::Failed`].
    pub(super) fn release(
        &self,
        key: Key<'_>,
        token: ClaimToken,
        mode: ReleaseMode,
        failure: (&str, u64),
    ) -> ScriptInvocation<'_> {
        let mut invocation = self.release.key(claim_key(key));
        invocation
            .key(fail_key(key))
            .arg(token.to_string())
            .arg(mode.arg())
            .arg(failure.0)
            .arg(failure.1);
        invocation
    }
}

impl Scripts {
    /// `tag`: bumps the tag clock of `prefix` and records it as `tag`'s invalidation (and
    /// deletion, with `delete`), announcing it on `channel` if given.
    pub(super) fn tag(
        &self,
        prefix: &str,
        tag: &str,
        delete: bool,
        channel: Option<&str>,
    ) -> ScriptInvocation<'_> {
        let mut invocation = self.tag.key(tag_clock_key(prefix));
        let mut head = vec![super::changes::TAG_MARKER];
        head.extend_from_slice(&crate::tags::tag_digest(tag).to_be_bytes());
        invocation
            .key(tag_key(prefix, tag))
            .arg(if delete { "1" } else { "0" })
            .arg(channel.unwrap_or(""))
            .arg(head);
        invocation
    }
}

/// What the `put` script does after the write.
#[derive(Debug, Clone, Copy)]
pub(super) enum AfterPut<'a> {
    /// Nothing: a plain put.
    Nothing,
    /// Put-and-release: lets go of this token's claim, whether written or not.
    Release(ClaimToken),
    /// Put-and-claim: once written, takes the key's claim with this new token at `now` until
    /// `until` (times as [`time_text`](super::layout::time_text)), expiring after `px` ms.
    Claim {
        token: ClaimToken,
        now: &'a str,
        until: &'a str,
        px: u64,
    },
}

/// The start of a write's announcement: whether it deletes, then the key's digest.
fn announcement_head(key: Key<'_>, deleted: bool) -> Vec<u8> {
    let mut head = Vec::with_capacity(17);
    head.push(u8::from(deleted));
    head.extend_from_slice(&key.digest().to_be_bytes());
    head
}

/// What the `release` script does with the failure state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ReleaseMode {
    /// The refresh succeeded: the failure state is cleared.
    Refreshed,
    /// The refresh failed: the given failure record replaces the failure state.
    Failed,
    /// The refresh did not run: the failure state stays as it is.
    Abandoned,
}

impl ReleaseMode {
    /// The mode as the script's `ARGV[2]`.
    fn arg(self) -> &'static str {
        match self {
            ReleaseMode::Refreshed => "r",
            ReleaseMode::Failed => "f",
            ReleaseMode::Abandoned => "a",
        }
    }
}

/// The `put` script's reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PutReply {
    /// Written, with this new generation.
    Written(u64),
    /// The condition failed; the key's current generation.
    Discarded(u64),
}

impl PutReply {
    const WRITTEN: i64 = 1;
    const DISCARDED: i64 = 0;

    /// Decodes `{code, generation as 8 bytes}`.
    pub(super) fn decode(reply: Value) -> Result<Self, String> {
        let Value::Array(items) = reply else {
            return Err(format!("{reply:?}"));
        };
        let [code, generation] = <[Value; 2]>::try_from(items).map_err(|i| format!("{i:?}"))?;
        Self::decode_parts(&code, generation)
    }

    /// Decodes put-and-claim's reply: `{WRITTEN, generation, claim reply}` or `{DISCARDED,
    /// generation}`.
    pub(super) fn decode_with_claim(reply: Value) -> Result<(Self, Option<ClaimReply>), String> {
        let Value::Array(mut items) = reply else {
            return Err(format!("{reply:?}"));
        };
        let claim = match items.len() {
            3 => items.pop().map(ClaimReply::decode).transpose()?,
            2 => None,
            _ => return Err(format!("{items:?}")),
        };
        let [code, generation] = <[Value; 2]>::try_from(items).map_err(|i| format!("{i:?}"))?;
        match (Self::decode_parts(&code, generation)?, claim) {
            (put @ PutReply::Written(_), Some(claim)) => Ok((put, Some(claim))),
            (put @ PutReply::Discarded(_), None) => Ok((put, None)),
            (put, claim) => Err(format!("{put:?} with claim {claim:?}")),
        }
    }

    fn decode_parts(code: &Value, generation: Value) -> Result<Self, String> {
        let generation = bytes_of(generation)
            .and_then(|g| <[u8; 8]>::try_from(g).ok())
            .map(u64::from_be_bytes)
            .ok_or("bad generation")?;
        match int_of(code) {
            Some(Self::WRITTEN) => Ok(PutReply::Written(generation)),
            Some(Self::DISCARDED) => Ok(PutReply::Discarded(generation)),
            other => Err(format!("flag {other:?}")),
        }
    }
}

/// The `claim` script's reply (times in ms since the epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ClaimReply {
    /// The claim is ours; the key's failures so far.
    Won { failures: u64 },
    /// Another claim holds the key until then.
    Held { until: u64 },
    /// The key backs off after failed refreshes.
    BackingOff { retry_after: u64, failures: u64 },
}

impl ClaimReply {
    const WON: i64 = 0;
    const HELD: i64 = 1;
    const BACKING_OFF: i64 = 2;

    /// Decodes the script's reply for `n` keys: one `{code, numbers...}` per key.
    pub(super) fn decode_many(reply: Value, n: usize) -> Result<Vec<Self>, String> {
        let Value::Array(replies) = reply else {
            return Err(format!("{reply:?}"));
        };
        if replies.len() != n {
            return Err(format!("{} replies to {n} keys", replies.len()));
        }
        replies.into_iter().map(Self::decode).collect()
    }

    /// Decodes `{code, numbers...}`. A missing failure count reads as 0; a missing time is an
    /// error.
    pub(super) fn decode(reply: Value) -> Result<Self, String> {
        let Value::Array(items) = reply else {
            return Err(format!("{reply:?}"));
        };
        let mut items = items.iter();
        let code = items.next().and_then(int_of);
        let mut number = || items.next().and_then(u64_of);
        match code {
            Some(Self::WON) => Ok(ClaimReply::Won {
                failures: number().unwrap_or(0),
            }),
            Some(Self::HELD) => Ok(ClaimReply::Held {
                until: number().ok_or("claim expiry")?,
            }),
            Some(Self::BACKING_OFF) => Ok(ClaimReply::BackingOff {
                retry_after: number().ok_or("retry")?,
                failures: number().unwrap_or(0),
            }),
            _ => Err("flag".to_owned()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redis_support::{lua_constant, lua_string};

    #[test]
    fn scripts_use_the_codes_and_modes_of_the_rust_side() {
        let code = |n: i64| n.to_string();
        let mode = |m: ReleaseMode| lua_string(m.arg());
        for (script, name, rust) in [
            (PUT_LUA, "WRITTEN", code(PutReply::WRITTEN)),
            (PUT_LUA, "DISCARDED", code(PutReply::DISCARDED)),
            (CLAIM_FN_LUA, "WON", code(ClaimReply::WON)),
            (CLAIM_FN_LUA, "HELD", code(ClaimReply::HELD)),
            (CLAIM_FN_LUA, "BACKING_OFF", code(ClaimReply::BACKING_OFF)),
            (RELEASE_LUA, "REFRESHED", mode(ReleaseMode::Refreshed)),
            (RELEASE_LUA, "FAILED", mode(ReleaseMode::Failed)),
        ] {
            assert_eq!(lua_constant(script, name), rust, "{name}");
        }
        // Abandoned is "any other mode": it must not be one of the two the script acts on.
        let abandoned = ReleaseMode::Abandoned.arg();
        assert_ne!(abandoned, ReleaseMode::Refreshed.arg());
        assert_ne!(abandoned, ReleaseMode::Failed.arg());
    }

    #[test]
    fn the_put_script_takes_its_layout_from_its_arguments() {
        for literal in ["48", "'CB", "CB\\1", "9, 16", ", 8, new"] {
            assert!(!PUT_LUA.contains(literal), "put.lua hard-codes `{literal}`");
        }
    }

    fn bulk(bytes: &[u8]) -> Value {
        Value::BulkString(bytes.to_vec())
    }

    fn generation(n: u64) -> Value {
        bulk(&n.to_be_bytes())
    }

    #[test]
    fn put_replies_decode() {
        let reply = |code, g| Value::Array(vec![Value::Int(code), g]);
        assert_eq!(
            PutReply::decode(reply(1, generation(7))),
            Ok(PutReply::Written(7))
        );
        assert_eq!(
            PutReply::decode(reply(0, generation(u64::MAX))),
            Ok(PutReply::Discarded(u64::MAX))
        );
        // RESP3 and script replies may carry the code as text.
        let text_code = Value::Array(vec![bulk(b"1"), generation(2)]);
        assert_eq!(PutReply::decode(text_code), Ok(PutReply::Written(2)));
    }

    #[test]
    fn bad_put_replies_are_errors() {
        let reply = |items: Vec<Value>| PutReply::decode(Value::Array(items));
        assert!(reply(vec![Value::Int(2), generation(1)]).is_err(), "code");
        assert!(reply(vec![Value::Int(1), bulk(b"short")]).is_err(), "size");
        assert!(reply(vec![Value::Int(1), Value::Int(3)]).is_err(), "type");
        assert!(reply(vec![Value::Int(1)]).is_err(), "length");
        assert!(reply(vec![Value::Int(1), generation(1), Value::Nil]).is_err());
        assert!(PutReply::decode(Value::Nil).is_err());
    }

    #[test]
    fn put_and_claim_replies_decode() {
        let won = Value::Array(vec![Value::Int(0), bulk(b"2")]);
        let reply = Value::Array(vec![Value::Int(1), generation(4), won.clone()]);
        assert_eq!(
            PutReply::decode_with_claim(reply),
            Ok((PutReply::Written(4), Some(ClaimReply::Won { failures: 2 })))
        );
        let discarded = Value::Array(vec![Value::Int(0), generation(9)]);
        assert_eq!(
            PutReply::decode_with_claim(discarded),
            Ok((PutReply::Discarded(9), None))
        );
        // A write always comes with its claim's reply, a discarded write never does.
        let bare = Value::Array(vec![Value::Int(1), generation(4)]);
        assert!(PutReply::decode_with_claim(bare).is_err());
        let odd = Value::Array(vec![Value::Int(0), generation(4), won]);
        assert!(PutReply::decode_with_claim(odd).is_err());
        assert!(PutReply::decode_with_claim(Value::Nil).is_err());
    }

    #[test]
    fn claim_replies_decode() {
        let reply = |items: Vec<Value>| ClaimReply::decode(Value::Array(items));
        assert_eq!(
            reply(vec![Value::Int(0), bulk(b"3")]),
            Ok(ClaimReply::Won { failures: 3 })
        );
        assert_eq!(
            reply(vec![Value::Int(0)]),
            Ok(ClaimReply::Won { failures: 0 })
        );
        assert_eq!(
            reply(vec![Value::Int(1), bulk(b"00000000000000001234")]),
            Ok(ClaimReply::Held { until: 1234 })
        );
        assert_eq!(
            reply(vec![
                Value::Int(2),
                bulk(b"00000000000000000050"),
                bulk(b"4")
            ]),
            Ok(ClaimReply::BackingOff {
                retry_after: 50,
                failures: 4
            })
        );
    }

    #[test]
    fn claim_replies_of_many_keys_decode_in_order() {
        let won = Value::Array(vec![Value::Int(0), bulk(b"2")]);
        let held = Value::Array(vec![Value::Int(1), bulk(b"00000000000000000007")]);
        assert_eq!(
            ClaimReply::decode_many(Value::Array(vec![won.clone(), held.clone()]), 2),
            Ok(vec![
                ClaimReply::Won { failures: 2 },
                ClaimReply::Held { until: 7 }
            ])
        );
        let short = ClaimReply::decode_many(Value::Array(vec![won.clone()]), 2);
        assert_eq!(short, Err("1 replies to 2 keys".to_owned()));
        let bad = Value::Array(vec![won, Value::Array(vec![Value::Int(9)])]);
        assert!(ClaimReply::decode_many(bad, 2).is_err());
        assert!(ClaimReply::decode_many(Value::Okay, 1).is_err());
    }

    #[test]
    fn bad_claim_replies_are_errors() {
        let reply = |items: Vec<Value>| ClaimReply::decode(Value::Array(items));
        assert!(reply(vec![Value::Int(1)]).is_err(), "held without an end");
        assert!(reply(vec![Value::Int(1), bulk(b"soon")]).is_err());
        assert!(reply(vec![Value::Int(2)]).is_err(), "backing off, no retry");
        assert!(reply(vec![Value::Int(3), bulk(b"1")]).is_err(), "code");
        assert!(reply(vec![]).is_err());
        assert!(ClaimReply::decode(Value::Okay).is_err());
    }
}
