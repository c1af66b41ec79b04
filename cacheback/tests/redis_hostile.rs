//! Hostile inputs and limits against a real `redis-server` (issue #5, part 4):
//!
//! - two applications (two prefixes) on one Redis, with the same job name and the same args,
//!   never see, overwrite, delete or refresh each other's entries, and never consume each
//!   other's queue;
//! - user-supplied args of any content and size are hashed into short, printable keys (no
//!   protocol or hash-tag injection), and args over the limit are refused before any Redis call;
//! - queue messages and stored entries over their size limits are refused without being decoded:
//!   a message is dead-lettered (the worker keeps going), an entry reads as a miss.
//!
//! Passwords, ACL users and `rediss://` TLS are tested for real in `redis_conformance.rs`.

#![cfg(feature = "redis")]

mod support;

use std::time::Duration;

use cacheback::{
    Cacheback, Error, Job, JobHandle, Policy, RedisQueue, RedisStore, Status, Worker,
    WorkerOptions, job_fn,
};
use support::{RedisServer, eventually, unique_prefix};
use tokio_util::sync::CancellationToken;

const WITHIN: Duration = Duration::from_secs(10);

/// One application on the shared Redis: its client, its queue and (when started) its worker.
struct App {
    prefix: String,
    client: Cacheback,
    queue: RedisQueue,
    stop: CancellationToken,
    worker: Option<tokio::task::JoinHandle<cacheback::worker::WorkerReport>>,
}

impl App {
    fn new(
        server: &RedisServer,
        prefix: &str,
        configure: impl FnOnce(RedisQueue) -> RedisQueue,
    ) -> App {
        let queue = configure(
            RedisQueue::builder(&server.url())
                .prefix(prefix)
                .poll_interval(Duration::from_millis(50))
                .build()
                .unwrap(),
        );
        let client = Cacheback::builder()
            .prefix(prefix)
            .store(RedisStore::from_url(&server.url()).unwrap())
            .queue(queue.clone())
            .in_process_worker(false)
            .build()
            .unwrap();
        App {
            prefix: prefix.to_owned(),
            client,
            queue,
            stop: CancellationToken::new(),
            worker: None,
        }
    }

    /// The same job in every app: "profile", whose value names the app that fetched it.
    fn profile(&self) -> JobHandle<impl Job<Args = String, Value = String> + use<>> {
        let app = self.prefix.clone();
        self.client.job(job_fn(
            "profile",
            Policy::default()
                .lifetime(Duration::from_secs(60))
                .fetch_on_miss(false),
            move |user: String| {
                let app = app.clone();
                async move { Ok::<_, std::io::Error>(format!("{app} fetched {}", user.len())) }
            },
        ))
    }

    fn start_worker(&mut self) {
        let worker = Worker::builder(&self.client)
            .options(WorkerOptions::default().concurrency(4))
            .build()
            .unwrap();
        let stop = self.stop.clone();
        self.worker = Some(tokio::spawn(
            worker.run_until(async move { stop.cancelled().await }),
        ));
    }

    async fn stop_worker(&mut self) -> cacheback::worker::WorkerReport {
        self.stop.cancel();
        self.worker.take().unwrap().await.unwrap()
    }
}

/// Every key in the Redis (`SCAN`, never `KEYS`).
fn all_keys(server: &RedisServer) -> Vec<String> {
    let mut conn = server.conn();
    let keys: redis::Iter<'_, String> = redis::cmd("SCAN")
        .cursor_arg(0)
        .arg("COUNT")
        .arg(1000)
        .clone()
        .iter(&mut conn)
        .unwrap();
    keys.collect::<Result<_, _>>().unwrap()
}

#[tokio::test]
async fn two_applications_on_one_redis_are_isolated_by_prefix() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let (a, b) = (unique_prefix("alpha"), unique_prefix("beta"));
    let mut alpha = App::new(&server, &a, |q| q);
    let mut beta = App::new(&server, &b, |q| q);
    let (pa, pb) = (alpha.profile(), beta.profile());
    let user = "same-user".to_owned();
    assert_ne!(
        pa.key(&user).unwrap().to_string(),
        pb.key(&user).unwrap().to_string(),
        "same job name and args, different keys"
    );

    // Writes of one app are invisible to the other.
    pa.set(user.clone(), "alpha's value".into()).await.unwrap();
    assert!(
        pb.peek(user.clone()).await.unwrap().is_none(),
        "beta has no entry"
    );
    pb.set(user.clone(), "beta's value".into()).await.unwrap();
    assert_eq!(
        pa.get_cached(user.clone()).await.unwrap().as_deref(),
        Some(&"alpha's value".to_owned())
    );

    // A refresh enqueued by alpha is only ever taken by alpha's worker, and only writes alpha's
    // entry; beta's worker, running all along on the same Redis, processes nothing.
    beta.start_worker();
    assert!(pa.invalidate(user.clone()).await.unwrap(), "enqueued");
    assert_eq!(beta.queue.len("default").await.unwrap(), 0);
    assert_eq!(alpha.queue.len("default").await.unwrap(), 1);
    alpha.start_worker();
    eventually("alpha's refresh landed", WITHIN, || async {
        pa.get_cached(user.clone()).await.unwrap().as_deref() == Some(&format!("{a} fetched 9"))
    })
    .await;
    let alpha_report = alpha.stop_worker().await;
    let beta_report = beta.stop_worker().await;
    assert_eq!((alpha_report.processed, alpha_report.dead_lettered), (1, 0));
    assert_eq!((beta_report.processed, beta_report.dead_lettered), (0, 0));
    assert_eq!(
        pb.get_cached(user.clone()).await.unwrap().as_deref(),
        Some(&"beta's value".to_owned()),
        "beta's entry untouched by alpha's refresh"
    );

    // A delete in one app leaves the other's entry.
    pa.delete(user.clone()).await.unwrap();
    assert_eq!(pa.get_cached(user.clone()).await.unwrap(), None);
    assert_eq!(
        pb.get_cached(user.clone()).await.unwrap().as_deref(),
        Some(&"beta's value".to_owned())
    );

    // Every key either app wrote carries its own prefix inside its hash tag.
    let keys = all_keys(&server);
    assert!(!keys.is_empty());
    for key in &keys {
        let in_alpha = key.starts_with(&format!("{{{a}:"));
        let in_beta = key.starts_with(&format!("{{{b}:"));
        assert!(
            key.starts_with('{') && key.contains('}'),
            "{key} is hash-tagged"
        );
        assert!(in_alpha ^ in_beta, "{key} belongs to exactly one app");
    }

    // Prefixes that could escape their hash tag or alias another app's keys are refused.
    for bad in ["a:b", "a}b", "a{b", "a b", "", "\r\n"] {
        let err = Cacheback::builder()
            .prefix(bad)
            .store(RedisStore::from_url(&server.url()).unwrap())
            .in_process_worker(false)
            .build()
            .unwrap_err();
        assert!(matches!(err, Error::Config { .. }), "{bad:?}: {err:?}");
    }
}

#[tokio::test]
async fn any_args_become_short_printable_keys_and_oversized_args_are_refused() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let prefix = unique_prefix("hostile");
    let app = App::new(&server, &prefix, |q| q);
    let profile = app.profile();
    let hostile = [
        "\r\n*1\r\n$8\r\nFLUSHALL\r\n".to_owned(),
        "}{*?[]\\ \t\0".to_owned(),
        "é漢字🦀".to_owned(),
        "x".repeat(512 * 1024),
        String::new(),
    ];
    for (i, args) in hostile.iter().enumerate() {
        profile.set(args.clone(), format!("v{i}")).await.unwrap();
    }
    for (i, args) in hostile.iter().enumerate() {
        assert_eq!(
            profile.get_cached(args.clone()).await.unwrap().as_deref(),
            Some(&format!("v{i}")),
            "args #{i} round-trips"
        );
    }
    let keys = all_keys(&server);
    assert_eq!(
        keys.len(),
        hostile.len(),
        "one key each, nothing else: {keys:?}"
    );
    for key in &keys {
        assert!(key.len() <= 226, "{key} is short");
        assert!(
            key.bytes().all(|c| c.is_ascii_graphic()),
            "{key:?} is printable ASCII without spaces"
        );
        assert!(key.starts_with(&format!("{{{prefix}:profile:")), "{key}");
    }

    // Over the 1 MiB args limit: a clear error, and not one command reaches Redis.
    let before = server.total_commands();
    let huge = "x".repeat(1 << 20);
    for err in [
        profile.get_cached(huge.clone()).await.unwrap_err(),
        profile.set(huge.clone(), "v".into()).await.unwrap_err(),
        profile.invalidate(huge.clone()).await.unwrap_err(),
        profile.refresh_async(huge.clone()).await.unwrap_err(),
    ] {
        assert!(
            err.to_string().contains("args are too large"),
            "clear error: {err}"
        );
    }
    // (`INFO commandstats` itself is the only command seen since.)
    assert_eq!(server.total_commands(), before + 1, "nothing sent to Redis");
}

#[tokio::test]
async fn oversized_messages_and_entries_are_refused_without_decoding() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let prefix = unique_prefix("limits");
    let mut app = App::new(&server, &prefix, |_| {
        RedisQueue::builder(&server.url())
            .prefix(&prefix)
            .poll_interval(Duration::from_millis(50))
            .max_message_bytes(4096)
            .build()
            .unwrap()
    });
    let profile = app.profile();

    // A message over the queue's limit (a hostile or buggy producer): dead-lettered with the
    // reason, and the worker goes on to the good request behind it.
    let stream = format!("{{{prefix}:queue}}:stream:default");
    let big = "\u{1}".repeat(8192);
    let _: String = server.cmd(&["XADD", &stream, "*", "m", &big]);
    assert!(profile.refresh_async("good".into()).await.unwrap());
    app.start_worker();
    eventually("the good request was processed", WITHIN, || async {
        profile.get_cached("good".into()).await.unwrap().is_some()
    })
    .await;
    let report = app.stop_worker().await;
    assert_eq!((report.processed, report.dead_lettered), (1, 1));
    let dead = app.queue.dead_letters("default", 10).await.unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert!(
        dead[0].reason.contains("over the limit of 4096 bytes"),
        "{}",
        dead[0].reason
    );

    // An entry over the store's limit (written by something else): a miss, never decoded.
    let small = RedisStore::builder(&server.url())
        .max_entry_bytes(1024)
        .build()
        .unwrap();
    let reader = Cacheback::builder()
        .prefix(&prefix)
        .store(small)
        .in_process_worker(false)
        .build()
        .unwrap();
    let profile_small = App {
        prefix: prefix.clone(),
        client: reader,
        queue: app.queue.clone(),
        stop: CancellationToken::new(),
        worker: None,
    };
    let through_small = profile_small.profile();
    profile.set("big".into(), "y".repeat(4096)).await.unwrap();
    let read = through_small.get_with_status("big".into()).await.unwrap();
    assert_eq!(read.status, Status::Miss, "over the limit: a miss");
    assert_eq!(read.value, None);
    assert_eq!(
        profile
            .get_cached("big".into())
            .await
            .unwrap()
            .map(|v| v.len()),
        Some(4096),
        "the entry itself is left alone for readers that accept it"
    );
}
