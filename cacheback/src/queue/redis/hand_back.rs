//! Handing back: a stopping worker puts the messages it holds back at the end of their streams
//! (`hand_back.lua`), so that other workers read them at once.

use redis::Value;
use tracing::debug;

use super::replies::pending_deliveries;
use super::{RedisQueue, Stream};
use crate::error::{Chain, Result};
use crate::redis_support::Failure;

/// See the script's header.
pub(super) const HAND_BACK_LUA: &str = include_str!("hand_back.lua");

/// Messages looked at per `XPENDING` call when handing back.
const HAND_BACK_PAGE: usize = 100;

impl RedisQueue {
    /// Hands the messages this consumer holds back to their streams (see the trait method).
    pub(super) async fn do_hand_back_held(&self) -> Result<u64> {
        let inner = &*self.inner;
        // A receive dropped while its `XREADGROUP ... BLOCK` waited is still running on the
        // blocking connection, and Redis may yet give it messages. A PING sent behind it is
        // answered only once it has returned, so whatever it took is pending by then.
        if let Err(e) = inner
            .blocking
            .query::<Value>(&redis::cmd("PING"), "PING")
            .await
        {
            debug!(error = %Chain(&e), "no answer behind the blocking read");
        }
        let mut handed = 0;
        for stream in &self.bound().streams {
            loop {
                let held = self.held(stream).await?;
                if held.is_empty() {
                    break;
                }
                let mut invocation = inner.hand_back.key(&stream.key);
                invocation.arg(&inner.group).arg(inner.options.max_len);
                for (id, deliveries) in &held {
                    invocation.arg(id).arg(*deliveries);
                }
                let n: u64 = inner
                    .conn
                    .script(&invocation, "hand-back script")
                    .await
                    .map_err(Failure::into_queue)?;
                handed += n;
                if held.len() < HAND_BACK_PAGE {
                    break;
                }
            }
        }
        Ok(handed)
    }

    /// The messages of `stream` pending for this consumer, with their delivery counts.
    async fn held(&self, stream: &Stream) -> Result<Vec<(String, u64)>> {
        let inner = &*self.inner;
        let mut cmd = redis::cmd("XPENDING");
        cmd.arg(&stream.key)
            .arg(&inner.group)
            .arg("-")
            .arg("+")
            .arg(HAND_BACK_PAGE)
            .arg(&inner.consumer);
        match inner.conn.query(&cmd, "XPENDING").await {
            Ok(reply) => Ok(pending_deliveries(reply)),
            Err(e) if e.code() == Some("NOGROUP") => Ok(Vec::new()),
            Err(e) => Err(e.into_queue()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::replies::PRIOR_DELIVERIES_FIELD;
    use super::*;
    use crate::redis_support::{lua_constant, lua_string};

    #[test]
    fn the_script_counts_deliveries_in_the_field_receive_reads() {
        assert_eq!(
            lua_constant(HAND_BACK_LUA, "PRIOR_DELIVERIES"),
            lua_string(PRIOR_DELIVERIES_FIELD)
        );
    }
}
