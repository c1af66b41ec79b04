//! The connections: a small pool of meta-protocol connections (async-memcached clients) and
//! the four commands the store needs. The store bounds each of its operations, connecting and
//! waiting for a connection included, with its command timeout.
//!
//! A call takes an idle connection or opens one (at most `max_connections` at once), runs its
//! command and gives the connection back. A connection whose command failed or was cancelled
//! (a timeout) is dropped, never reused: its reply may still be on the wire. When a connection
//! is lost under a command, every idle one is dropped too (after a memcached restart they are
//! all dead), and the command is tried once more on a new connection if it ran on a reused
//! one. That retry is safe for every command here: reads are idempotent, and every write is an
//! `add` or a compare-and-swap, so a write that did land the first time makes the retry find
//! the item changed, and the store's compare-and-swap loops read again. The one cost, when a
//! connection dies after memcached applied a write and before its reply came back: the
//! operation sees its own write as another's (a `put` reports its write as discarded, a
//! `claim` finds the key held, until that claim's end).

use std::fmt;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use async_memcached::{Client, Error as McError, MetaProtocol, MetaValue, Status};
use tokio::sync::{Semaphore, SemaphorePermit};

use super::failure::Failure;

/// Connection settings.
#[derive(Debug, Clone)]
pub(super) struct ConnOptions {
    /// The address as the client library takes it: `tcp://host:port`.
    pub(super) dsn: String,
    pub(super) connect_timeout: Duration,
    pub(super) max_connections: usize,
}

/// One item as read with `mg <key> v c t`.
#[derive(Debug)]
pub(super) struct Item {
    pub(super) data: Vec<u8>,
    /// The item's compare-and-swap value.
    pub(super) cas: u64,
    /// Seconds left before it expires; `None` when it never does.
    pub(super) ttl: Option<u64>,
}

/// How a write may land.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Write {
    /// Only if the key is missing (`add`).
    Add,
    /// Only if the item is unchanged since it was read with this CAS value.
    Cas(u64),
}

/// The pool. Shared by every clone of the store.
pub(super) struct Pool {
    options: ConnOptions,
    idle: Mutex<Vec<Client>>,
    permits: Semaphore,
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("options", &self.options)
            .field("idle", &self.lock_idle().len())
            .finish()
    }
}

/// A connection lent to one command, with its permit; dropped unless given back.
struct Lease<'p> {
    client: Client,
    reused: bool,
    _permit: SemaphorePermit<'p>,
}

impl Pool {
    pub(super) fn new(options: ConnOptions) -> Pool {
        Pool {
            permits: Semaphore::new(options.max_connections),
            options,
            idle: Mutex::new(Vec::new()),
        }
    }

    fn lock_idle(&self) -> MutexGuard<'_, Vec<Client>> {
        self.idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    async fn lease(&self) -> Result<Lease<'_>, Failure> {
        let permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| Failure::Protocol {
                what: "connection pool",
                message: "closed".to_owned(),
            })?;
        if let Some(client) = self.lock_idle().pop() {
            return Ok(Lease {
                client,
                reused: true,
                _permit: permit,
            });
        }
        let after = self.options.connect_timeout;
        let client = tokio::time::timeout(after, Client::new(&self.options.dsn))
            .await
            .map_err(|_| Failure::ConnectTimeout { after })?
            .map_err(|e| Failure::from_client("connect", e))?;
        Ok(Lease {
            client,
            reused: false,
            _permit: permit,
        })
    }

    fn give_back(&self, lease: Lease<'_>) {
        if !lease.client.is_closed() {
            self.lock_idle().push(lease.client);
        }
    }

    /// Runs `command` on a connection; see the module docs for what happens to connections
    /// and when the command is tried again.
    async fn call(&self, what: &'static str, command: Command<'_>) -> Result<Reply, Failure> {
        let mut retried = false;
        loop {
            let mut lease = self.lease().await?;
            match command.run(&mut lease.client).await {
                Ok(reply) => {
                    self.give_back(lease);
                    return Ok(reply);
                }
                Err(error) => {
                    let failure = Failure::from_client(what, error);
                    if !failure.is_connection_lost() {
                        return Err(failure);
                    }
                    self.lock_idle().clear();
                    if !lease.reused || retried {
                        return Err(failure);
                    }
                    retried = true;
                }
            }
        }
    }

    /// `mg <key> v c t`: the item, or `None` when the key is missing.
    pub(super) async fn get(&self, what: &'static str, key: &str) -> Result<Option<Item>, Failure> {
        let Reply::Item(value) = self.call(what, Command::Get { key }).await? else {
            return Err(unexpected(what));
        };
        let Some(value) = value else {
            return Ok(None);
        };
        let cas = value.cas.ok_or_else(|| Failure::Protocol {
            what,
            message: "no CAS value in the reply".to_owned(),
        })?;
        Ok(Some(Item {
            // memcached returns an empty value as no data block at all.
            data: value.data.unwrap_or_default(),
            cas,
            ttl: value.ttl_remaining.and_then(|t| u64::try_from(t).ok()),
        }))
    }

    /// `ms <key> <len> T<exptime> (ME | C<cas>)`: whether the write landed (`false`: the key
    /// exists for [`Write::Add`], changed or vanished for [`Write::Cas`]).
    pub(super) async fn set(
        &self,
        what: &'static str,
        key: &str,
        value: &[u8],
        write: Write,
        exptime: u64,
    ) -> Result<bool, Failure> {
        let condition = match write {
            Write::Add => "ME".to_owned(),
            Write::Cas(cas) => format!("C{cas}"),
        };
        let flags = [format!("T{exptime}"), condition];
        match self
            .call(
                what,
                Command::Set {
                    key,
                    value,
                    flags: &flags,
                },
            )
            .await?
        {
            Reply::Done(done) => Ok(done),
            _ => Err(unexpected(what)),
        }
    }

    /// `md <key> C<cas>`: whether the item was deleted (`false`: it changed or vanished).
    pub(super) async fn delete(
        &self,
        what: &'static str,
        key: &str,
        cas: u64,
    ) -> Result<bool, Failure> {
        let condition = format!("C{cas}");
        match self
            .call(
                what,
                Command::Delete {
                    key,
                    condition: &condition,
                },
            )
            .await?
        {
            Reply::Done(done) => Ok(done),
            _ => Err(unexpected(what)),
        }
    }

    /// `version`: whether memcached answers.
    pub(super) async fn version(&self) -> Result<String, Failure> {
        match self.call("ping", Command::Version).await? {
            Reply::Version(version) => Ok(version),
            _ => Err(unexpected("ping")),
        }
    }
}

/// One command, with what it needs; run again as it is when it is retried.
#[derive(Clone, Copy)]
enum Command<'a> {
    Get {
        key: &'a str,
    },
    Set {
        key: &'a str,
        value: &'a [u8],
        flags: &'a [String; 2],
    },
    Delete {
        key: &'a str,
        condition: &'a str,
    },
    Version,
}

/// A command's answer.
enum Reply {
    Item(Option<MetaValue>),
    /// Whether a conditional write or delete happened.
    Done(bool),
    Version(String),
}

impl Command<'_> {
    async fn run(self, client: &mut Client) -> Result<Reply, McError> {
        // NS (add: the key exists), EX (CAS: the item changed), NF (CAS: the item is gone).
        let not_done = |e: &McError| {
            matches!(
                e,
                McError::Protocol(Status::NotStored | Status::Exists | Status::NotFound)
            )
        };
        match self {
            Command::Get { key } => client
                .meta_get(key, false, None, Some(&["v", "c", "t"]))
                .await
                .map(Reply::Item),
            Command::Set { key, value, flags } => {
                let flags = [flags[0].as_str(), flags[1].as_str()];
                match client.meta_set(key, value, false, None, Some(&flags)).await {
                    Ok(_) => Ok(Reply::Done(true)),
                    Err(e) if not_done(&e) => Ok(Reply::Done(false)),
                    Err(e) => Err(e),
                }
            }
            Command::Delete { key, condition } => {
                match client
                    .meta_delete(key, false, None, Some(&[condition]))
                    .await
                {
                    Ok(_) => Ok(Reply::Done(true)),
                    Err(e) if not_done(&e) => Ok(Reply::Done(false)),
                    Err(e) => Err(e),
                }
            }
            Command::Version => client.version().await.map(Reply::Version),
        }
    }
}

fn unexpected(what: &'static str) -> Failure {
    Failure::Protocol {
        what,
        message: "a reply of another command".to_owned(),
    }
}
