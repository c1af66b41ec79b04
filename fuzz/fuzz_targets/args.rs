//! Args as a worker receives them: any bytes either fail to decode or decode to args whose key
//! is stable (same args, same key) and whose encoding round-trips.
#![no_main]

use std::collections::BTreeMap;

use cacheback::{Cacheback, Codec, Policy, job_fn};
use libfuzzer_sys::fuzz_target;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Filter {
    All,
    Tag(String),
    Range { from: i64, to: i64 },
    Nested(Vec<Option<Filter>>),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Args {
    user: String,
    page: u32,
    score: f64,
    filters: Vec<Filter>,
    options: BTreeMap<String, (bool, u8)>,
}

fuzz_target!(|data: &[u8]| {
    let Ok(args) = Codec::Postcard.decode::<Args>(data) else {
        return;
    };
    let client = Cacheback::builder()
        .in_process_worker(false)
        .build()
        .expect("client without a worker builds outside a runtime");
    let job = client.job(job_fn("fuzz", Policy::default(), |a: Args| async move {
        Ok::<_, std::io::Error>(a.page)
    }));
    // Args over the size limit are refused with an error; that is all there is to check.
    let Ok(key) = job.key(&args) else {
        return;
    };
    assert_eq!(job.key(&args.clone()).ok(), Some(key.clone()), "same args, same key");
    let reencoded = Codec::Postcard.encode(&args).expect("decoded args encode");
    let back: Args = Codec::Postcard.decode(&reencoded).expect("re-encoded args decode");
    // NaN != NaN: compare the encodings instead of the values.
    assert_eq!(Codec::Postcard.encode(&back).expect("encode"), reencoded);
    assert_eq!(job.key(&back).ok(), Some(key), "round-tripped args keep their key");
});
