//! `tdmq-backup-bench`: throughput, memory, disk and latency of the real daemons on one machine.
//!
//! Starts pulsar-lite (behind the relay) and an in-process s3s-fs server per scenario, runs the
//! release binaries of the ingester and uploader as processes with their own data dirs, drives
//! them with the real `tdmq-backup` CLI, and prints one table at the end. Never a test: numbers
//! depend on the machine. See docs/benchmarks.md for what each scenario measures and how.
//!
//! Each scenario has its module (`baseline`, `e2e`, `uploader`, `latency`, `sizes`, `rules`,
//! `big`, `verify`, `restore`); `stack` starts the harness's [`harness::Stack`] they run on, `process` reads the
//! daemons' /proc figures, `messages` makes the payloads, and `table` prints the results.
//!
//! ```text
//! scripts/bench.sh                                   # everything, release build
//! scripts/bench.sh --quick                           # 10x smaller smoke run
//! scripts/bench.sh --scenarios baseline,e2e --json out.json
//! ```

mod baseline;
mod big;
mod e2e;
mod formats;
mod latency;
mod messages;
mod process;
mod restore;
mod rules;
mod scale;
mod script;
mod sizes;
mod stack;
mod steady;
mod table;
mod uploader;
mod verify;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::Parser;

use crate::stack::Bench;
use crate::table::{row_line, table, targets, Row};
use crate::uploader::UploaderCase;

const KB: usize = 1000;
const MIB: usize = 1 << 20;

#[derive(Debug, Parser)]
#[command(
    name = "tdmq-backup-bench",
    about = "Benchmarks the real tdmq-backup daemons against pulsar-lite and in-process s3s-fs"
)]
struct Args {
    /// `all`, or a comma list of
    /// baseline,e2e,uploader,uploader-https,uploader-grpc,latency,sizes,rules,big,verify,restore,steady,formats
    /// (`steady`, `formats` and `scale` are not part of `all`: `steady` runs the end-to-end
    /// backup --steady-runs times, `formats` once per object format with --formats-messages,
    /// `scale` with 1, 2 and 3 ingesters on a 6-partition topic with --messages).
    #[arg(long, default_value = "all")]
    scenarios: String,
    /// Messages (1 KB each) for the baseline and end-to-end runs; other scenarios scale from it.
    #[arg(long, default_value_t = 200_000)]
    messages: usize,
    /// 10x smaller everything, for a smoke run.
    #[arg(long)]
    quick: bool,
    /// Also write the results to this file as JSON.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Where tdmq-backup, tdmq-backup-ingester and tdmq-backup-uploader are [default: next to
    /// this binary].
    #[arg(long, value_name = "DIR")]
    bin_dir: Option<PathBuf>,
    /// Keep the temporary directory (daemon logs and data) instead of deleting it.
    #[arg(long)]
    keep: bool,
    /// Run the uploader scenarios this many times and report the run with the median
    /// to-stored ratio (every run's ratio is in the notes): on a shared 2-core box that phase
    /// swings by ±15 % between identical runs, more than the changes it is meant to show.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=20))]
    repeat: u32,
    /// Runs of the `steady` scenario (fresh stack each, both baselines each).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=50))]
    steady_runs: u32,
    /// 1 KB messages per `steady` run.
    #[arg(long, default_value_t = 300_000)]
    steady_messages: usize,
    /// 1 KB messages per `formats` run (one per format; DuckDB then queries them all).
    #[arg(long, default_value_t = 1_000_000)]
    formats_messages: usize,
}

/// What `all` runs; `steady` besides.
const ALL: [&str; 11] = [
    "baseline",
    "e2e",
    "uploader",
    "uploader-https",
    "uploader-grpc",
    "latency",
    "sizes",
    "rules",
    "big",
    "restore",
    "verify",
];

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,pulsar=off"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let scenarios: Vec<String> = if args.scenarios.trim() == "all" {
        ALL.iter().map(|s| s.to_string()).collect()
    } else {
        args.scenarios
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect()
    };
    for s in &scenarios {
        if !ALL.contains(&s.as_str()) && !["steady", "formats", "scale"].contains(&s.as_str()) {
            bail!(
                "unknown scenario {s:?}: expected all or a comma list of {ALL:?}, steady, formats or scale"
            );
        }
    }
    let bin_dir = match &args.bin_dir {
        Some(dir) => dir.clone(),
        None => std::env::current_exe()
            .context("finding this binary")?
            .parent()
            .context("this binary has no directory")?
            .to_path_buf(),
    };
    for name in [
        "tdmq-backup",
        "tdmq-backup-ingester",
        "tdmq-backup-uploader",
    ] {
        if !bin_dir.join(name).is_file() {
            bail!(
                "{name} not found in {}: run `cargo build --release --workspace --bins` (scripts/bench.sh does) or pass --bin-dir",
                bin_dir.display()
            );
        }
    }
    let scale = if args.quick { 10 } else { 1 };
    let root = tempfile::Builder::new()
        .prefix("tdmq-bench-")
        .tempdir()
        .context("creating the temp dir")?;
    let bench = Bench {
        bin_dir,
        root: root.path().to_path_buf(),
        n: (args.messages / scale).max(100),
        scale,
        stacks: Default::default(),
    };
    eprintln!(
        "tdmq-backup-bench: binaries from {}, work dir {}, {} messages{}",
        bench.bin_dir.display(),
        bench.root.display(),
        bench.n,
        if args.quick { " (--quick)" } else { "" }
    );

    let started = Instant::now();
    let mut rows: Vec<Row> = Vec::new();
    let mut failures: Vec<String> = Vec::new();
    let mut baseline_1k: Option<f64> = None;
    for scenario in &scenarios {
        eprintln!("== {scenario}");
        let result = match scenario.as_str() {
            "baseline" => bench.baseline(KB, bench.n).await.map(|row| {
                baseline_1k = Some(row.msg_per_s());
                vec![row]
            }),
            "e2e" => bench.e2e_with_and_without_gzip(baseline_1k).await,
            "uploader" => {
                bench
                    .uploader_repeated(UploaderCase::LOCAL, args.repeat)
                    .await
            }
            "uploader-https" => {
                bench
                    .uploader_repeated(UploaderCase::LOCAL_HTTPS, args.repeat)
                    .await
            }
            "uploader-grpc" => {
                bench
                    .uploader_repeated(UploaderCase::GRPC, args.repeat)
                    .await
            }
            "latency" => bench.latency().await.map(|r| vec![r]),
            "sizes" => bench.sizes().await,
            "rules" => bench.rules().await,
            "big" => bench.big().await,
            "restore" => bench.restore(KB, bench.n / 2).await,
            "verify" => bench.verify().await,
            "steady" => {
                bench
                    .steady((args.steady_messages / scale).max(100), args.steady_runs)
                    .await
            }
            "scale" => bench.scale(bench.n).await,
            "formats" => {
                bench
                    .formats((args.formats_messages / scale).max(100))
                    .await
            }
            _ => unreachable!("checked above"),
        };
        match result {
            Ok(new_rows) => {
                for row in &new_rows {
                    eprintln!("   {}", row_line(row));
                }
                rows.extend(new_rows);
            }
            Err(error) => {
                eprintln!("   FAILED: {error:#}");
                failures.push(format!("{scenario}: {error:#}"));
            }
        }
    }

    println!();
    println!(
        "tdmq-backup-bench, {} core(s), {} UTC, total {:.0} s{}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        chrono::Utc::now().format("%Y-%m-%d %H:%M"),
        started.elapsed().as_secs_f64(),
        if args.quick { ", --quick" } else { "" }
    );
    println!();
    print!("{}", table(&rows));
    println!();
    println!("Targets (docs/benchmarks.md says why the missed ones are missed on this machine):");
    println!();
    print!("{}", targets(&rows));
    for failure in &failures {
        println!("\nFAILED {failure}");
    }
    if let Some(path) = &args.json {
        let doc = serde_json::json!({
            "date": chrono::Utc::now().to_rfc3339(),
            "quick": args.quick,
            "messages": bench.n,
            "rows": rows,
            "failures": failures,
        });
        std::fs::write(path, serde_json::to_vec_pretty(&doc)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if args.keep {
        let kept = root.keep();
        eprintln!("kept {}", kept.display());
    }
    if !failures.is_empty() {
        bail!("{} scenario(s) failed", failures.len());
    }
    Ok(())
}
