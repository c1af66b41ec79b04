//! A workload run: pick the registry entries asked for, run them one by one, and write
//! `results.jsonl` (after each workload), `summary.md` and `latency.svg`.

use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

use serde_json::Value as Json;

use crate::machine;
use crate::report::{self, Record};
use crate::workloads::{self, Ctx, Scale, Workload};

/// The arguments of a workload run (`all`, `quick`, or bare workload ids).
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct WorkloadArgs {
    /// Workload ids (`W1` ... `W7`); none means every workload. `all` and `quick` are accepted
    /// here too.
    targets: Vec<String>,
    /// Small sizes (implied by `quick`).
    #[arg(long)]
    quick: bool,
    /// Where to write `results.jsonl`, `summary.md` and `latency.svg`.
    #[arg(long, default_value = "target/bench-results")]
    out: PathBuf,
    /// The queue behind the refreshes of W3 through Redis and W2 across processes (the store
    /// stays Redis).
    #[cfg(feature = "redis")]
    #[arg(long, value_enum, default_value_t)]
    queue: crate::queues::QueueChoice,
}

#[cfg(feature = "redis")]
impl WorkloadArgs {
    /// The queue behind W3's refreshes through Redis.
    pub(crate) fn queue(&self) -> crate::queues::QueueChoice {
        self.queue
    }
}

/// Runs the workloads `args` asks for, at small sizes when `quick` (or `args` says so).
pub(crate) fn run(args: &WorkloadArgs, quick: bool) -> Result<(), String> {
    let (ids, quick) = targets(args, quick);
    let registry = workloads::registry();
    let selected = select(&registry, &ids)?;
    let scale = if quick { Scale::Quick } else { Scale::Full };
    if cfg!(debug_assertions) {
        eprintln!("warning: a debug build; timings mean little (use --release)");
    }
    std::fs::create_dir_all(&args.out)
        .map_err(|e| format!("cannot create {}: {e}", args.out.display()))?;
    let started = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    let run_facts = report::run_facts(scale.name(), &started, machine::facts());
    eprintln!(
        "cacheback-bench: {} workload entries at {} scale; machine {}",
        selected.len(),
        scale.name(),
        run_facts["machine"]
    );
    let load_before = machine::load_average();
    let t0 = Instant::now();
    let ctx = Ctx::new(scale);
    #[cfg(feature = "redis")]
    let ctx = ctx.with_queue(args.queue());
    let jsonl_path = args.out.join("results.jsonl");
    run_workloads(&ctx, &selected, &run_facts, &jsonl_path)?;
    let records = ctx.records();
    let summary_path = args.out.join("summary.md");
    let mut summary = format!(
        "Run of {started}, {} scale, {:.0} s; machine: {} ({} cores); load average (1, 5, 15 min) {} before, {} after.\n\n",
        scale.name(),
        t0.elapsed().as_secs_f64(),
        run_facts["machine"]["cpu_model"].as_str().unwrap_or("?"),
        run_facts["machine"]["nproc"],
        load_text(load_before),
        load_text(machine::load_average()),
    );
    summary.push_str(&report::markdown_table(&records));
    write(&summary_path, &summary)?;
    println!("{summary}");
    write_plot(&records, &args.out.join("latency.svg"))?;
    eprintln!(
        "results: {} and {}",
        jsonl_path.display(),
        summary_path.display()
    );
    Ok(())
}

/// The workload ids asked for (upper case; none means all) and whether the run is quick.
pub(crate) fn targets(args: &WorkloadArgs, quick: bool) -> (Vec<String>, bool) {
    let mut quick = quick || args.quick;
    let mut ids = Vec::new();
    for t in &args.targets {
        match t.to_ascii_lowercase().as_str() {
            "all" => {}
            "quick" => quick = true,
            id => ids.push(id.to_ascii_uppercase()),
        }
    }
    (ids, quick)
}

/// The registry entries of `ids` (every entry when empty); an unknown id is an error.
fn select<'a>(registry: &'a [Workload], ids: &[String]) -> Result<Vec<&'a Workload>, String> {
    for id in ids {
        if !registry.iter().any(|w| w.id == id) {
            let known: Vec<&str> = registry.iter().map(|w| w.id).collect();
            return Err(format!(
                "unknown workload `{id}` (known: {})",
                known.join(", ")
            ));
        }
    }
    Ok(registry
        .iter()
        .filter(|w| ids.is_empty() || ids.iter().any(|id| id == w.id))
        .collect())
}

/// Runs each workload and keeps its records in `ctx`; `results.jsonl` is written after each
/// workload, so an interrupted run keeps what it measured.
fn run_workloads(
    ctx: &Ctx,
    selected: &[&Workload],
    run_facts: &Json,
    jsonl_path: &Path,
) -> Result<(), String> {
    let mut lines = String::new();
    for workload in selected {
        let t = Instant::now();
        eprintln!("== {} {} ...", workload.id, workload.title);
        let records = ctx.run(workload);
        for r in &records {
            eprintln!(
                "   {} | {} | {}: {}",
                r.workload, r.variant, r.subject, r.summary
            );
            lines.push_str(&report::json_line(r, run_facts));
            lines.push('\n');
        }
        eprintln!("   ({:.1} s)", t.elapsed().as_secs_f64());
        ctx.keep(records);
        write(jsonl_path, &lines)?;
    }
    Ok(())
}

/// `1.00, 0.50, 0.20`, or `?` when the load average is unknown.
fn load_text(load: Option<[f64; 3]>) -> String {
    load.map_or("?".to_owned(), |[a, b, c]| {
        format!("{a:.2}, {b:.2}, {c:.2}")
    })
}

/// Draws the read-latency plot, when the run has latencies to draw.
fn write_plot(records: &[Record], svg_path: &Path) -> Result<(), String> {
    match crate::plot::latency_svg(records) {
        Some(svg) => {
            write(svg_path, &svg)?;
            eprintln!("plot: {}", svg_path.display());
        }
        None => eprintln!("plot: no W2/W4/W6 latencies in this run; none drawn"),
    }
    Ok(())
}

fn write(path: &Path, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
}
