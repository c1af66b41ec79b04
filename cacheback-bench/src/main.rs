//! # cacheback-bench
//!
//! The workload harness of `shared/bench/WORKLOADS.md`: runs W1–W7 and W11 (and the near
//! cache's N1–N4 and the tags' T1) against cacheback,
//! next to the raw baselines (in the same process run) and the peers (moka, cached,
//! amalgam-cache; hitbox and http-cache-tower-server for the HTTP layer), and writes JSON lines,
//! a Markdown table and an SVG plot of the read-latency distributions.
//!
//! ```text
//! cargo run --release -p cacheback-bench -- all          # every workload, full size (< 10 min)
//! cargo run --release -p cacheback-bench -- quick        # every workload, small sizes (< 60 s)
//! cargo run --release -p cacheback-bench -- W2 W4        # some workloads, full size
//! cargo run --release -p cacheback-bench -- W4 --quick   # one workload, small size
//! cargo run --release -p cacheback-bench -- W2 W3 --queue amqp   # on RabbitMQ (or nats); chaos too
//! cargo run --release -p cacheback-bench -- all --out DIR
//! cargo run --release -p cacheback-bench -- chaos        # reliability: faults across processes
//! cargo run --release -p cacheback-bench -- soak         # reliability: 10 min, RSS + connections
//! ```
//!
//! Workloads are entries of a registry ([`workloads::registry`]); an entry that needs Redis says
//! so and gets a `redis-server` the harness starts on loopback and stops at the end.

mod fleet;
mod harness;
mod machine;
mod peers;
mod plot;
#[cfg(feature = "redis")]
mod queues;
#[cfg(feature = "redis")]
mod redis_cost;
mod reliability;
mod report;
mod stats;
mod value;
mod workloads;
mod zipf;

use clap::{Parser, Subcommand};

use crate::harness::WorkloadArgs;

/// Runs the workloads of WORKLOADS.md, or a reliability run.
///
/// Without a subcommand, the arguments are workload ids (`W2 W4 --quick`); none means `all`.
#[derive(Debug, Parser)]
#[command(
    name = "cacheback-bench",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    workloads: WorkloadArgs,
}

/// What to run.
#[derive(Debug, Subcommand)]
enum Command {
    /// Every workload (or the ids given) at full size.
    All(WorkloadArgs),
    /// Every workload (or the ids given) at small sizes: a smoke test.
    Quick(WorkloadArgs),
    /// Faults across real processes: 2 web + 2 worker processes, one Redis.
    Chaos(reliability::chaos::Args),
    /// A long mixed load; RSS and connections must stay flat.
    Soak(reliability::soak::Args),
    /// A child process of a workload or a reliability run (see `fleet.rs`).
    #[command(name = fleet::CHILD_COMMAND, hide = true)]
    Child {
        #[command(subcommand)]
        role: fleet::Role,
    },
    /// A W7 child: fills one store and prints its footprint.
    #[command(name = workloads::w7::CHILD_COMMAND, hide = true)]
    W7Child(workloads::w7::ChildArgs),
}

fn main() {
    let cli = Cli::parse();
    let (name, result) = match cli.command {
        None => ("", harness::run(&cli.workloads, false)),
        Some(Command::All(args)) => ("", harness::run(&args, false)),
        Some(Command::Quick(args)) => ("", harness::run(&args, true)),
        Some(Command::Chaos(args)) => (" chaos", reliability::chaos::main(&args)),
        Some(Command::Soak(args)) => (" soak", reliability::soak::main(&args)),
        Some(Command::Child { role }) => fleet::child_main(role),
        Some(Command::W7Child(args)) => {
            workloads::w7::child_main(&args);
            return;
        }
    };
    if let Err(error) = result {
        eprintln!("cacheback-bench{name}: {error}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &str) -> Cli {
        let argv = std::iter::once("cacheback-bench").chain(line.split_whitespace());
        Cli::try_parse_from(argv).unwrap_or_else(|e| panic!("`{line}`: {e}"))
    }

    /// The command lines of CI, BENCHMARKS.md and RELIABILITY.md keep their meaning.
    #[test]
    fn documented_command_lines_parse() {
        assert!(matches!(
            parse("quick --out target/bench-quick").command,
            Some(Command::Quick(_))
        ));
        assert!(matches!(parse("all").command, Some(Command::All(_))));
        assert!(matches!(
            parse("all --out DIR").command,
            Some(Command::All(_))
        ));
        let bare = parse("W2 W4");
        assert!(bare.command.is_none());
        assert_eq!(
            harness::targets(&bare.workloads, false),
            (vec!["W2".to_owned(), "W4".to_owned()], false)
        );
        let quick = parse("W4 --quick");
        assert_eq!(
            harness::targets(&quick.workloads, false),
            (vec!["W4".to_owned()], true)
        );
        #[cfg(feature = "redis")]
        {
            let nats = parse("W3 --quick --queue nats");
            assert_eq!(nats.workloads.queue(), queues::QueueChoice::Nats);
            assert_eq!(parse("W3").workloads.queue(), queues::QueueChoice::Redis);
            assert!(Cli::try_parse_from(["cacheback-bench", "W3", "--queue", "kafka"]).is_err());
            assert!(matches!(
                parse("chaos --seconds 10 --queue amqp").command,
                Some(Command::Chaos(_))
            ));
        }
        let none = parse("");
        assert!(none.command.is_none());
        assert_eq!(harness::targets(&none.workloads, false), (vec![], false));
        assert!(matches!(
            parse("chaos --seconds 10 --out target/chaos-ci").command,
            Some(Command::Chaos(_))
        ));
        assert!(matches!(parse("soak").command, Some(Command::Soak(_))));
        assert!(matches!(
            parse("soak --minutes 30").command,
            Some(Command::Soak(_))
        ));
        assert!(matches!(
            parse("soak --minutes 1 --sample-seconds 5").command,
            Some(Command::Soak(_))
        ));
    }

    /// The command lines the harness gives its own child processes.
    #[test]
    fn child_command_lines_parse() {
        assert!(matches!(
            parse("__w7-child moka 1000").command,
            Some(Command::W7Child(_))
        ));
        #[cfg(feature = "redis")]
        for line in [
            "__child w2-reader redis://127.0.0.1:1/ w2fleet-1 1700000000000 3",
            "__child w2-worker redis://127.0.0.1:1/ w2fleet-1 1700000000000 3",
            "__child w2-reader redis://127.0.0.1:1/ w2fleet-1 1700000000000 3 --queue redis \
             --queue-url redis://127.0.0.1:1/ --memcached memcache://127.0.0.1:2",
            "__child w2-reader redis://127.0.0.1:1/ w2amalgam-1 1700000000000 3 --near --amalgam",
            "__child chaos-web --name web-1 --log x.log --url redis://127.0.0.1:1/ --prefix p \
             --keys 200 --readers 8 --start-ms 1 --faults-until-ms 2 --until-ms 3",
            "__child chaos-worker --name worker-1 --log x.log --url redis://127.0.0.1:1/ \
             --prefix p --keys 200 --readers 8 --start-ms 1 --faults-until-ms 2 --until-ms 3",
        ] {
            assert!(
                matches!(parse(line).command, Some(Command::Child { .. })),
                "{line}"
            );
        }
    }
}
