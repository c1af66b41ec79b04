//! The tag commands of `Admin` (`invalidate-tag`, `delete-tag`), run in process against a
//! client on the in-process store: what each does to the tagged entries and to the others,
//! and a tag the library refuses.

use std::process::ExitCode;
use std::time::Duration;

use cacheback::{Cacheback, Job, Policy, Status, Tags};
use cacheback_cli::{Admin, AdminCommand};
use clap::Parser;

/// Values tagged `team:<n % 2>`.
struct Member;

impl Job for Member {
    type Args = u64;
    type Value = u64;
    type Error = std::io::Error;

    fn name(&self) -> &str {
        "member"
    }

    fn policy(&self) -> Policy {
        Policy::default()
            .lifetime(Duration::from_secs(3600))
            .fetch_on_miss(false)
    }

    async fn fetch(&self, n: u64) -> Result<u64, std::io::Error> {
        Ok(n)
    }

    fn tags(&self, n: &u64, _: &u64) -> Tags {
        Tags::new().with(format!("team:{}", n % 2))
    }
}

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    admin: AdminCommand,
}

fn command(args: &[&str]) -> AdminCommand {
    let argv = std::iter::once("admin").chain(args.iter().copied());
    Cli::try_parse_from(argv).expect("the command parses").admin
}

#[tokio::test]
async fn tags_are_invalidated_and_deleted_by_name() {
    let cache = Cacheback::builder()
        .in_process_worker(false)
        .build()
        .unwrap();
    let members = cache.job(Member);
    for n in 0..4 {
        members.set(n, n).await.unwrap();
    }
    let admin = Admin::new().job(&members);
    let status = |n| {
        let members = members.clone();
        async move { members.get_with_status(n).await.unwrap().status }
    };

    assert_eq!(
        admin.run(command(&["invalidate-tag", "team:0"])).await,
        ExitCode::SUCCESS
    );
    assert_eq!(status(0).await, Status::Stale, "tagged: served stale");
    assert_eq!(status(2).await, Status::Stale);
    assert_eq!(status(1).await, Status::Hit, "the other team is untouched");

    // (Without `--yes`, `delete-tag` asks on a terminal and refuses elsewhere, as `delete`
    // does: `examples/tests/fleet_admin.rs` checks that through the binary, whose stdin is
    // not a terminal; here stdin is the test runner's.)
    assert_eq!(
        admin
            .run(command(&["delete-tag", "team:1", "--yes", "--json"]))
            .await,
        ExitCode::SUCCESS
    );
    assert_eq!(status(1).await, Status::Miss, "tagged: gone");
    assert_eq!(status(3).await, Status::Miss);

    // A tag the library refuses is a bad command line (exit code 2).
    assert_eq!(
        admin.run(command(&["invalidate-tag", ""])).await,
        ExitCode::from(2)
    );
    // Without a job, there is no client to act on.
    assert_eq!(
        Admin::new()
            .run(command(&["invalidate-tag", "team:0"]))
            .await,
        ExitCode::from(2)
    );
}
