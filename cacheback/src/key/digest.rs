//! Seeding and hashing: a job's seed from its prefix and name, and the xxh3-128 digest of its
//! canonically encoded args, encoded in a per-thread scratch buffer so that the read path does not
//! allocate.

use std::cell::RefCell;

use serde::Serialize;
use xxhash_rust::xxh3::{xxh3_64, xxh3_128_with_seed};

use super::canonical::put_len;
use super::{KeyError, canonical_encode};

/// Capacity the per-thread scratch buffer may keep between calls; one huge arg must not pin
/// megabytes on every thread that ever saw it.
const MAX_RETAINED_CAPACITY: usize = 64 * 1024;

thread_local! {
    /// Scratch buffer for [`digest`], so that computing a key on the read path does not allocate.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// The 128-bit digest identifying `args` of job `job` under `prefix`: xxh3-128 of the canonical
/// encoding of `args`, seeded with [`job_seed`] of the prefix and job name.
///
/// The prefix and job name are not validated here; that is done once, when a job is registered.
pub(crate) fn digest<A: Serialize + ?Sized>(
    prefix: &str,
    job: &str,
    args: &A,
) -> Result<u128, KeyError> {
    digest_seeded(job_seed(prefix, job), args)
}

/// The seed of one job's digests under one prefix: xxh3-64 over the prefix and the job name
/// (each as `u64` big-endian length, then bytes). Computed once per registered job, so the read
/// path hashes only the args.
pub(crate) fn job_seed(prefix: &str, job: &str) -> u64 {
    let mut buf = Vec::with_capacity(16 + prefix.len() + job.len());
    put_len(&mut buf, prefix.len());
    buf.extend_from_slice(prefix.as_bytes());
    put_len(&mut buf, job.len());
    buf.extend_from_slice(job.as_bytes());
    xxh3_64(&buf)
}

/// [`digest`] with the job's seed already computed: the read path's form.
#[inline(always)]
pub(crate) fn digest_seeded<A: Serialize + ?Sized>(seed: u64, args: &A) -> Result<u128, KeyError> {
    let in_scratch = SCRATCH.try_with(|scratch| {
        // Already borrowed means a `Serialize` impl is computing a digest from inside `digest`;
        // that nested call gets its own buffer instead of a panic.
        let mut buf = scratch.try_borrow_mut().ok()?;
        let result = digest_with(&mut buf, seed, args);
        // Don't keep a huge allocation around.
        if buf.capacity() > MAX_RETAINED_CAPACITY {
            buf.clear();
            buf.shrink_to(MAX_RETAINED_CAPACITY);
        }
        Some(result)
    });
    match in_scratch {
        Ok(Some(result)) => result,
        // Re-entered, or called while this thread's locals are being destroyed.
        Ok(None) | Err(_) => digest_with(&mut Vec::new(), seed, args),
    }
}

#[inline(always)]
fn digest_with<A: Serialize + ?Sized>(
    buf: &mut Vec<u8>,
    seed: u64,
    args: &A,
) -> Result<u128, KeyError> {
    buf.clear();
    canonical_encode(args, buf)?;
    Ok(xxh3_128_with_seed(buf, seed))
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::collections::HashMap;

    use serde::ser;

    use crate::key::MAX_ARGS_LEN;

    fn encode<A: Serialize + ?Sized>(args: &A) -> Vec<u8> {
        let mut out = Vec::new();
        canonical_encode(args, &mut out).expect("encodable");
        out
    }

    #[test]
    fn prefix_and_job_boundaries_are_unambiguous() {
        let d = |p, j| digest(p, j, &()).unwrap();
        assert_ne!(d("a", "b:c"), d("a:b", "c"));
        assert_ne!(d("ab", "c"), d("a", "bc"));
        assert_ne!(d("p", "job"), d("p", "job2"));
        assert_ne!(
            digest("p", "j", &("a", "b")).unwrap(),
            digest("p", "j", &("a:b",)).unwrap()
        );
    }

    struct Failing;

    impl Serialize for Failing {
        fn serialize<S: ser::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
            Err(ser::Error::custom("no can do"))
        }
    }

    #[test]
    fn serialize_errors_are_reported() {
        let err = digest("p", "j", &(1u8, Failing)).unwrap_err();
        assert_eq!(err, KeyError::Serialize("no can do".to_owned()));
        assert_eq!(err.to_string(), "args could not be serialized: no can do");
    }

    #[test]
    fn repeated_digests_reuse_the_buffer_and_agree() {
        let args = (
            String::from("alice"),
            vec![1u64, 2, 3],
            HashMap::from([("k", 1u8)]),
        );
        let first = digest("p", "j", &args).unwrap();
        for _ in 0..1000 {
            assert_eq!(digest("p", "j", &args).unwrap(), first);
        }
        // The same value through a fresh buffer gives the same digest.
        assert_eq!(
            digest_with(&mut Vec::new(), job_seed("p", "j"), &args).unwrap(),
            first
        );
        // From other threads, too.
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let args = args.clone();
                std::thread::spawn(move || digest("p", "j", &args).unwrap())
            })
            .collect();
        for t in threads {
            assert_eq!(t.join().unwrap(), first);
        }
    }

    fn scratch_capacity() -> usize {
        SCRATCH.with(|s| s.borrow().capacity())
    }

    #[test]
    fn oversized_args_are_rejected_and_the_buffer_shrinks() {
        let too_large = Err(KeyError::ArgsTooLarge {
            limit: MAX_ARGS_LEN,
        });
        // A str costs a tag and an 8-byte length on top of its bytes.
        let fits = "x".repeat(MAX_ARGS_LEN - 9);
        assert_eq!(encode(fits.as_str()).len(), MAX_ARGS_LEN);
        assert!(digest("p", "j", fits.as_str()).is_ok());
        assert!(scratch_capacity() <= MAX_RETAINED_CAPACITY);

        let over = "x".repeat(MAX_ARGS_LEN - 8);
        assert_eq!(digest("p", "j", over.as_str()), too_large);
        // Many small items: fails part-way, without buffering all of them.
        let many = vec![0u32; MAX_ARGS_LEN];
        assert_eq!(digest("p", "j", &many), too_large);
        // Through map sorting as well.
        let map: HashMap<u32, u32> = (0..200_000).map(|i| (i, i)).collect();
        assert_eq!(digest("p", "j", &map), too_large);
        assert!(scratch_capacity() <= MAX_RETAINED_CAPACITY);

        // Still usable afterwards.
        assert_eq!(
            digest("p", "j", &()).unwrap(),
            digest_with(&mut Vec::new(), job_seed("p", "j"), &()).unwrap()
        );
    }

    /// A `Serialize` impl that computes a digest itself, re-entering `digest`.
    struct Reentrant(u32);

    impl Serialize for Reentrant {
        fn serialize<S: ser::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let inner = digest("inner", "job", &self.0).map_err(ser::Error::custom)?;
            s.serialize_u128(inner)
        }
    }

    #[test]
    fn reentrant_digest_does_not_panic() {
        let inner = digest("inner", "job", &5u32).unwrap();
        assert_eq!(
            digest("p", "j", &Reentrant(5)).unwrap(),
            digest("p", "j", &inner).unwrap()
        );
        assert_eq!(
            digest("p", "j", &vec![Reentrant(1), Reentrant(2)]).unwrap(),
            digest_with(
                &mut Vec::new(),
                job_seed("p", "j"),
                &vec![Reentrant(1), Reentrant(2)]
            )
            .unwrap()
        );
    }
}
