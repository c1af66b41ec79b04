//! # cacheback-bench
//!
//! The workload harness of `shared/bench/WORKLOADS.md`: runs W1–W7 against cacheback, next to the
//! raw baselines (in the same process run) and the peers (moka, cached), and writes JSON lines,
//! a Markdown table and an SVG plot of the read-latency distributions.
//!
//! ```text
//! cargo run --release -p cacheback-bench -- all          # every workload, full size (< 10 min)
//! cargo run --release -p cacheback-bench -- quick        # every workload, small sizes (< 60 s)
//! cargo run --release -p cacheback-bench -- W2 W4        # some workloads, full size
//! cargo run --release -p cacheback-bench -- W4 --quick   # one workload, small size
//! cargo run --release -p cacheback-bench -- all --out DIR
//! cargo run --release -p cacheback-bench -- chaos        # reliability: faults across processes
//! cargo run --release -p cacheback-bench -- soak         # reliability: 10 min, RSS + connections
//! ```
//!
//! Workloads are entries of a registry ([`workloads::registry`]); an entry that needs Redis says
//! so and gets a `redis-server` the harness starts on loopback and stops at the end.

mod fleet;
mod machine;
mod peers;
mod plot;
mod reliability;
mod report;
mod stats;
mod value;
mod workloads;
mod zipf;

use std::path::PathBuf;
use std::time::{Instant, SystemTime};

use clap::Parser;

use crate::workloads::{Ctx, Scale};

/// The `main` of a reliability run (`chaos`, `soak`): its own arguments in, an error out.
type ReliabilityRun = fn(&[String]) -> Result<(), String>;

/// Runs the workloads of WORKLOADS.md.
#[derive(Debug, Parser)]
#[command(name = "cacheback-bench", version, about)]
struct Cli {
    /// `all`, `quick` (every workload at small sizes), or workload ids (`W1` ... `W7`).
    #[arg(default_value = "all")]
    targets: Vec<String>,
    /// Small sizes (implied by `quick`).
    #[arg(long)]
    quick: bool,
    /// Where to write `results.jsonl`, `summary.md` and `latency.svg`.
    #[arg(long, default_value = "target/bench-results")]
    out: PathBuf,
}

fn main() {
    // W7 measures each store in a fresh child process of this binary.
    let args: Vec<String> = std::env::args().collect();
    let reliability_run: Option<ReliabilityRun> = match args.get(1).map(String::as_str) {
        Some(workloads::w7::CHILD_COMMAND) => {
            workloads::w7::child_main(&args[2..]);
            return;
        }
        Some(fleet::CHILD_COMMAND) => fleet::child_main(&args[2..]),
        Some("chaos") => Some(reliability::chaos::main),
        Some("soak") => Some(reliability::soak::main),
        _ => None,
    };
    if let Some(run) = reliability_run {
        if let Err(error) = run(&args[2..]) {
            eprintln!("cacheback-bench {}: {error}", args[1]);
            std::process::exit(1);
        }
        return;
    }
    let cli = Cli::parse();
    if let Err(error) = run(cli) {
        eprintln!("cacheback-bench: {error}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<(), String> {
    let mut quick = cli.quick;
    let mut ids: Vec<String> = Vec::new();
    for t in &cli.targets {
        match t.to_ascii_lowercase().as_str() {
            "all" => {}
            "quick" => quick = true,
            id => ids.push(id.to_ascii_uppercase()),
        }
    }
    let registry = workloads::registry();
    for id in &ids {
        if !registry.iter().any(|w| w.id == id) {
            let known: Vec<&str> = registry.iter().map(|w| w.id).collect();
            return Err(format!(
                "unknown workload `{id}` (known: {})",
                known.join(", ")
            ));
        }
    }
    let selected: Vec<_> = registry
        .iter()
        .filter(|w| ids.is_empty() || ids.iter().any(|id| id == w.id))
        .collect();
    let scale = if quick { Scale::Quick } else { Scale::Full };
    if cfg!(debug_assertions) {
        eprintln!("warning: a debug build; timings mean little (use --release)");
    }

    std::fs::create_dir_all(&cli.out)
        .map_err(|e| format!("cannot create {}: {e}", cli.out.display()))?;
    let started = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    let run_facts = report::run_facts(scale.name(), &started, machine::facts());
    eprintln!(
        "cacheback-bench: {} workload entries at {} scale; machine {}",
        selected.len(),
        scale.name(),
        run_facts["machine"]
    );

    let load_before = machine::load_average();
    let ctx = Ctx::new(scale);
    let jsonl_path = cli.out.join("results.jsonl");
    let mut lines = String::new();
    let t0 = Instant::now();
    for workload in selected {
        let t = Instant::now();
        eprintln!("== {} {} ...", workload.id, workload.title);
        let records = ctx.run(workload);
        for r in &records {
            eprintln!(
                "   {} | {} | {}: {}",
                r.workload, r.variant, r.subject, r.summary
            );
            lines.push_str(&report::json_line(r, &run_facts));
            lines.push('\n');
        }
        eprintln!("   ({:.1} s)", t.elapsed().as_secs_f64());
        ctx.keep(records);
        // Written after each workload, so an interrupted run keeps what it measured.
        std::fs::write(&jsonl_path, &lines)
            .map_err(|e| format!("cannot write {}: {e}", jsonl_path.display()))?;
    }
    let records = ctx.records();
    let load = |l: Option<[f64; 3]>| {
        l.map_or("?".to_owned(), |[a, b, c]| {
            format!("{a:.2}, {b:.2}, {c:.2}")
        })
    };
    let mut summary = format!(
        "Run of {started}, {} scale, {:.0} s; machine: {} ({} cores); load average (1, 5, 15 min) {} before, {} after.\n\n",
        scale.name(),
        t0.elapsed().as_secs_f64(),
        run_facts["machine"]["cpu_model"].as_str().unwrap_or("?"),
        run_facts["machine"]["nproc"],
        load(load_before),
        load(machine::load_average()),
    );
    summary.push_str(&report::markdown_table(&records));
    let summary_path = cli.out.join("summary.md");
    std::fs::write(&summary_path, &summary)
        .map_err(|e| format!("cannot write {}: {e}", summary_path.display()))?;
    println!("{summary}");

    let svg_path = cli.out.join("latency.svg");
    match plot::latency_svg(&records) {
        Some(svg) => {
            std::fs::write(&svg_path, svg)
                .map_err(|e| format!("cannot write {}: {e}", svg_path.display()))?;
            eprintln!("plot: {}", svg_path.display());
        }
        None => eprintln!("plot: no W2/W4/W6 latencies in this run; none drawn"),
    }
    eprintln!(
        "results: {} and {}",
        jsonl_path.display(),
        summary_path.display()
    );
    Ok(())
}
