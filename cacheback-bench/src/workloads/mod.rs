//! The workload registry: every entry of WORKLOADS.md that the harness runs.
//!
//! An entry is an id (`W1` ... `W7`), a title, what it needs (nothing, or a Redis server) and a
//! function from the run's [`Ctx`] to [`Record`]s. Several entries may share an id (`W1` memory,
//! `W1` Redis): `-- W1` runs all of them. Redis entries are compiled with the `redis` feature and
//! get the one `redis-server` of the run from [`Ctx::redis`].

use std::sync::{Mutex, OnceLock};

#[cfg(feature = "redis")]
use cacheback_test_support::MemcachedServer;
use cacheback_test_support::RedisServer;

use crate::report::Record;

#[cfg(feature = "redis")]
pub(crate) mod coherence;
#[cfg(feature = "redis")]
pub(crate) mod near;
pub(crate) mod tags;
pub(crate) mod w1;
pub(crate) mod w11;
pub(crate) mod w2;
pub(crate) mod w3;
pub(crate) mod w4;
pub(crate) mod w5;
pub(crate) mod w6;
pub(crate) mod w7;

/// Full sizes (`all`, the figures of BENCHMARKS.md) or small ones (`quick`, a smoke test).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scale {
    Full,
    Quick,
}

impl Scale {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Scale::Full => "full",
            Scale::Quick => "quick",
        }
    }

    /// `full` at full scale, `quick` at quick scale.
    pub(crate) fn pick<T>(self, full: T, quick: T) -> T {
        match self {
            Scale::Full => full,
            Scale::Quick => quick,
        }
    }
}

/// What an entry needs besides this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Needs {
    Nothing,
    /// A `redis-server`, started by the harness on loopback.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    Redis,
}

/// One registry entry.
#[derive(Debug)]
pub(crate) struct Workload {
    pub(crate) id: &'static str,
    pub(crate) title: &'static str,
    pub(crate) needs: Needs,
    pub(crate) run: fn(&Ctx) -> Result<Vec<Record>, String>,
}

/// Every entry, in the order they run (W6 reuses the W2 and W4 results of the same run).
pub(crate) fn registry() -> Vec<Workload> {
    #[cfg_attr(not(feature = "redis"), allow(unused_mut))]
    let mut entries = memory_entries();
    #[cfg(feature = "redis")]
    for redis in redis_entries() {
        insert_after_its_workload(&mut entries, redis);
    }
    entries
}

/// The entries that need nothing but this process, in workload order.
fn memory_entries() -> Vec<Workload> {
    vec![
        Workload {
            id: "W1",
            title: "hit path, memory store",
            needs: Needs::Nothing,
            run: w1::memory,
        },
        Workload {
            id: "W2",
            title: "stale burst, one process, memory store",
            needs: Needs::Nothing,
            run: w2::memory,
        },
        Workload {
            id: "W3",
            title: "refresh throughput, LocalQueue + in-process worker",
            needs: Needs::Nothing,
            run: w3::local,
        },
        Workload {
            id: "W4",
            title: "mixed Zipf workload, memory store",
            needs: Needs::Nothing,
            run: w4::memory,
        },
        Workload {
            id: "W5",
            title: "miss path, memory store",
            needs: Needs::Nothing,
            run: w5::memory,
        },
        Workload {
            id: "W6",
            title: "peers on W2 and W4",
            needs: Needs::Nothing,
            run: w6::peers,
        },
        Workload {
            id: "W7",
            title: "footprint of 1,000,000 entries",
            needs: Needs::Nothing,
            run: w7::footprint,
        },
        Workload {
            id: "W11",
            title: "HTTP layer: a 50 ms handler, 64 keep-alive clients, Zipf URLs",
            needs: Needs::Nothing,
            run: w11::memory,
        },
        Workload {
            id: "T1",
            title: "invalidate_tag over tagged entries, memory store",
            needs: Needs::Nothing,
            run: tags::memory,
        },
    ]
}

/// The entries that need a Redis server, in workload order.
#[cfg(feature = "redis")]
fn redis_entries() -> [Workload; 14] {
    [
        Workload {
            id: "W1",
            title: "hit path, Redis store",
            needs: Needs::Redis,
            run: w1::redis,
        },
        Workload {
            id: "W2",
            title: "stale burst, Redis: one process, and 4 processes + a worker process",
            needs: Needs::Redis,
            run: w2::redis,
        },
        Workload {
            id: "W1",
            title: "hit path, Redis Cluster (3 masters) next to one Redis",
            needs: Needs::Redis,
            run: w1::cluster,
        },
        Workload {
            id: "W2",
            title: "stale burst across processes, Redis Cluster (3 masters) next to one Redis",
            needs: Needs::Redis,
            run: w2::cluster,
        },
        Workload {
            id: "W3",
            title: "refresh throughput, RedisStore + RedisQueue + worker",
            needs: Needs::Redis,
            run: w3::redis,
        },
        Workload {
            id: "W4",
            title: "mixed Zipf workload, RedisStore + RedisQueue + worker",
            needs: Needs::Redis,
            run: w4::redis,
        },
        Workload {
            id: "W6",
            title: "amalgam-cache on Redis on W2 and W4",
            needs: Needs::Redis,
            run: w6::redis,
        },
        Workload {
            id: "W11",
            title: "HTTP layer on Redis: a 50 ms handler, 64 keep-alive clients, Zipf URLs",
            needs: Needs::Redis,
            run: w11::redis,
        },
        Workload {
            id: "N1",
            title: "near cache: invalidation propagation between clients, Redis",
            needs: Needs::Redis,
            run: near::propagation,
        },
        Workload {
            id: "N2",
            title: "batch read of 100 keys, Redis",
            needs: Needs::Redis,
            run: near::batch,
        },
        Workload {
            id: "N2",
            title: "batch read of 100 stale keys, Redis queue",
            needs: Needs::Redis,
            run: near::stale_batch,
        },
        Workload {
            id: "T1",
            title: "invalidate_tag over tagged entries, Redis + near cache",
            needs: Needs::Redis,
            run: tags::redis,
        },
        Workload {
            id: "N3",
            title: "invalidation propagation to 4 processes: announcements, pub/sub, client \
                    tracking",
            needs: Needs::Redis,
            run: coherence::propagation,
        },
        Workload {
            id: "N4",
            title: "announcement fan-out to 16 processes at rising write rates, and client \
                    tracking",
            needs: Needs::Redis,
            run: coherence::fanout,
        },
    ]
}

/// Inserts `entry` right after the last entry of its workload (a Redis entry runs right after
/// the memory entries of its workload), or at the end if its workload has none.
#[cfg(feature = "redis")]
fn insert_after_its_workload(entries: &mut Vec<Workload>, entry: Workload) {
    let after = entries
        .iter()
        .rposition(|w| w.id == entry.id)
        .map_or(entries.len(), |i| i + 1);
    entries.insert(after, entry);
}

/// What every workload of a run shares.
#[derive(Debug)]
pub(crate) struct Ctx {
    pub(crate) scale: Scale,
    redis: OnceLock<Result<RedisServer, String>>,
    #[cfg(feature = "redis")]
    memcached: OnceLock<Result<MemcachedServer, String>>,
    #[cfg(feature = "redis")]
    cluster: OnceLock<Result<cacheback_test_support::RedisCluster, String>>,
    records: Mutex<Vec<Record>>,
    /// The queue of the workloads that take `--queue`.
    #[cfg(feature = "redis")]
    pub(crate) brokers: crate::queues::Brokers,
}

impl Ctx {
    pub(crate) fn new(scale: Scale) -> Self {
        Ctx {
            scale,
            redis: OnceLock::new(),
            #[cfg(feature = "redis")]
            memcached: OnceLock::new(),
            #[cfg(feature = "redis")]
            cluster: OnceLock::new(),
            records: Mutex::new(Vec::new()),
            #[cfg(feature = "redis")]
            brokers: crate::queues::Brokers::default(),
        }
    }

    /// The same context with `queue` behind the workloads that take `--queue`.
    #[cfg(feature = "redis")]
    pub(crate) fn with_queue(mut self, queue: crate::queues::QueueChoice) -> Self {
        self.brokers = crate::queues::Brokers::new(queue);
        self
    }

    /// Runs one entry; a failure becomes a record that says so (the run goes on).
    pub(crate) fn run(&self, workload: &Workload) -> Vec<Record> {
        let result = match workload.needs {
            Needs::Redis => match self.redis() {
                Ok(_) => (workload.run)(self),
                Err(e) => Err(format!("needs Redis: {e}")),
            },
            Needs::Nothing => (workload.run)(self),
        };
        result.unwrap_or_else(|error| {
            vec![crate::report::not_measured(
                workload.id,
                workload.title,
                &error,
            )]
        })
    }

    /// The run's `redis-server`, started on first use and stopped when the run ends.
    pub(crate) fn redis(&self) -> Result<&RedisServer, String> {
        self.redis
            .get_or_init(|| RedisServer::try_start().map_err(|e| e.to_string()))
            .as_ref()
            .map_err(Clone::clone)
    }

    /// The run's `memcached`, started on first use and stopped when the run ends.
    #[cfg(feature = "redis")]
    pub(crate) fn memcached(&self) -> Result<&MemcachedServer, String> {
        self.memcached
            .get_or_init(|| MemcachedServer::try_start().map_err(|e| e.to_string()))
            .as_ref()
            .map_err(Clone::clone)
    }

    /// The run's Redis Cluster (3 masters), started on first use and stopped when the run
    /// ends.
    #[cfg(feature = "redis")]
    pub(crate) fn cluster(&self) -> Result<&cacheback_test_support::RedisCluster, String> {
        self.cluster
            .get_or_init(|| {
                cacheback_test_support::RedisCluster::builder()
                    .masters(3)
                    .try_start()
                    .map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(Clone::clone)
    }

    /// Keeps a workload's records (later workloads may compare against them).
    pub(crate) fn keep(&self, records: Vec<Record>) {
        self.lock().extend(records);
    }

    /// Every record so far.
    pub(crate) fn records(&self) -> Vec<Record> {
        self.lock().clone()
    }

    /// The first kept record of `workload` by `subject` of exactly this `variant`.
    pub(crate) fn find(&self, workload: &str, variant: &str, subject: &str) -> Option<Record> {
        self.lock()
            .iter()
            .find(|r| r.workload == workload && r.subject == subject && r.variant == variant)
            .cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Record>> {
        self.records.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A Tokio runtime of 2 worker threads (the machine's cores), timers on.
pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}
