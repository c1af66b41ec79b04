//! The job registry: name → type-erased job, shared by the client and its workers.

use std::any::TypeId;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use futures_util::future::BoxFuture;

use crate::engine::Core;
use crate::engine::refresh::ReadBefore;
use crate::job::Job;
use crate::observe::JobMetrics;
use crate::policy::Policy;
use crate::queue::RefreshRequest;
use crate::tally::Tally;

/// A registered job with everything derived from it once: name, policy, metric handles.
pub(crate) struct JobEntry<J> {
    pub(crate) job: J,
    pub(crate) name: Arc<str>,
    /// [`key::job_seed`](crate::key) of the client's prefix and this name.
    pub(crate) seed: u64,
    pub(crate) policy: Policy,
    pub(crate) metrics: JobMetrics,
    /// Whether this process has seen the job give a value tags (then its fetches read the
    /// tag clock first).
    pub(crate) tagged: AtomicBool,
}

impl<J> JobEntry<J> {
    /// Whether this process has seen the job give a value tags.
    pub(crate) fn tags_seen(&self) -> bool {
        self.tagged.load(Ordering::Relaxed)
    }

    /// Notes that the job gives its values tags.
    pub(crate) fn saw_tags(&self) {
        self.tagged.store(true, Ordering::Relaxed);
    }
}

/// What a worker did with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RefreshOutcome {
    /// Fetched and stored.
    Refreshed,
    /// Fetch failed (or the value could not be stored); failure recorded.
    Failed,
    /// Not run: the key was written after the request was enqueued.
    Skipped,
    /// Fetched, but the key was written meanwhile, so the result was dropped.
    Discarded,
}

/// The result of processing one request: done (ack) or refused (dead-letter, with a reason).
#[derive(Debug)]
pub(crate) enum Processed {
    Done(RefreshOutcome),
    Rejected { reason: String, kind: &'static str },
}

/// A job with its types erased, so a worker can run it from a name and encoded args.
pub(crate) trait ErasedJob: Send + Sync + 'static {
    fn job_type(&self) -> TypeId;
    /// This process's counts of the job, when the client keeps them.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))] // read by `fleet_stats`
    fn tally(&self) -> Option<Arc<Tally>>;
    fn process(
        self: Arc<Self>,
        core: Arc<Core>,
        request: RefreshRequest,
        before: ReadBefore,
    ) -> BoxFuture<'static, Processed>;
}

impl<J: Job> ErasedJob for JobEntry<J> {
    fn job_type(&self) -> TypeId {
        TypeId::of::<J>()
    }

    fn tally(&self) -> Option<Arc<Tally>> {
        self.metrics.tally.clone()
    }

    fn process(
        self: Arc<Self>,
        core: Arc<Core>,
        request: RefreshRequest,
        before: ReadBefore,
    ) -> BoxFuture<'static, Processed> {
        Box::pin(crate::engine::refresh::process_request(
            core, self, request, before,
        ))
    }
}

/// Name → job. Locked only to register and to look a job up (never across an `.await`).
#[derive(Default)]
pub(crate) struct Registry {
    jobs: RwLock<HashMap<Arc<str>, Arc<dyn ErasedJob>>>,
}

impl Registry {
    /// Registers `entry` under its name; re-registering the same job type replaces it, another
    /// type under the same name is refused.
    pub(crate) fn register<J: Job>(&self, entry: Arc<JobEntry<J>>) -> Result<(), Arc<str>> {
        let mut jobs = self
            .jobs
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(existing) = jobs.get(&entry.name)
            && existing.job_type() != TypeId::of::<J>()
        {
            return Err(Arc::clone(&entry.name));
        }
        jobs.insert(Arc::clone(&entry.name), entry);
        Ok(())
    }

    pub(crate) fn get(&self, name: &str) -> Option<Arc<dyn ErasedJob>> {
        self.jobs
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(name)
            .cloned()
    }

    /// Each job's name and tally, for the jobs that keep one.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))] // read by `fleet_stats`
    pub(crate) fn tallies(&self) -> Vec<(Arc<str>, Arc<Tally>)> {
        self.jobs
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .iter()
            .filter_map(|(name, job)| Some((Arc::clone(name), job.tally()?)))
            .collect()
    }

    pub(crate) fn names(&self) -> Vec<Arc<str>> {
        let mut names: Vec<_> = self
            .jobs
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .keys()
            .cloned()
            .collect();
        names.sort();
        names
    }
}
