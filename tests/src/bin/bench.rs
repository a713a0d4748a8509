//! `tdmq-backup-bench`: throughput, memory, disk and latency of the real daemons on one machine.
//!
//! Starts pulsar-lite (behind the relay) and an in-process s3s-fs server per scenario, runs the
//! release binaries of the ingester and uploader as processes with their own data dirs, drives
//! them with the real `tdmq-backup` CLI, and prints one table at the end. Never a test: numbers
//! depend on the machine. See docs/benchmarks.md for what each scenario measures and how.
//!
//! ```text
//! scripts/bench.sh                                   # everything, release build
//! scripts/bench.sh --quick                           # 10x smaller smoke run
//! scripts/bench.sh --scenarios baseline,e2e --json out.json
//! ```

use std::collections::{BTreeMap, HashSet};
use std::fs::OpenOptions;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use clap::Parser;
use futures::StreamExt;
use harness::{PulsarLite, S3Server, SampleMessage};
use pulsar::consumer::InitialPosition;
use pulsar::{Consumer, ConsumerOptions, SubType, TokioExecutor};
use rand::{Rng, SeedableRng};
use serde::Serialize;
use serde_json::Value;

const BUCKET: &str = "bench-bucket";
/// pulsar-lite settings for every broker the bench starts (see `Bench::stack`).
const BROKER_TOML: &str = "pulsar_channel_write_buffer_high_water_mark_bytes = 268435456\n\
                           pulsar_channel_write_buffer_low_water_mark_bytes = 134217728";
const BARE_BUCKET: &str = "bench-bare";
const KB: usize = 1000;
const MIB: usize = 1 << 20;
/// The uploader's defaults (uploader/src/config.rs): 8 MiB parts, multipart above 8 MiB, 4 at once.
const PART_SIZE: usize = 8 * MIB;
const UPLOAD_CONCURRENCY: usize = 4;

#[derive(Debug, Parser)]
#[command(
    name = "tdmq-backup-bench",
    about = "Benchmarks the real tdmq-backup daemons against pulsar-lite and in-process s3s-fs"
)]
struct Args {
    /// `all`, or a comma list of
    /// baseline,e2e,uploader,uploader-https,uploader-grpc,latency,sizes,rules,big.
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
}

const ALL: [&str; 9] = [
    "baseline",
    "e2e",
    "uploader",
    "uploader-https",
    "uploader-grpc",
    "latency",
    "sizes",
    "rules",
    "big",
];

/// How the `uploader*` scenarios run the uploader.
#[derive(Debug, Clone, Copy)]
struct UploaderCase {
    /// Scenario (and stack directory) name.
    name: &'static str,
    /// Appended to the rows' names.
    label: &'static str,
    /// The S3 server on HTTPS.
    https: bool,
    /// The uploader's `read_local` (the default, true: it reads the sealed files from the
    /// ingester's disk, as on one host; false: over ReadSegment, as in a split deployment).
    read_local: bool,
}

impl UploaderCase {
    const LOCAL: UploaderCase = UploaderCase {
        name: "uploader",
        label: "",
        https: false,
        read_local: true,
    };
    const LOCAL_HTTPS: UploaderCase = UploaderCase {
        name: "uploader-https",
        label: ", https",
        https: true,
        read_local: true,
    };
    const GRPC: UploaderCase = UploaderCase {
        name: "uploader-grpc",
        label: ", over gRPC",
        https: false,
        read_local: false,
    };
}

/// One row of the final table.
#[derive(Debug, Clone, Default, Serialize)]
struct Row {
    scenario: String,
    messages: u64,
    /// Payload bytes (or, for upload rows, object bytes).
    bytes: u64,
    seconds: f64,
    ratio: Option<f64>,
    peak_rss_ingester_kb: Option<u64>,
    peak_rss_uploader_kb: Option<u64>,
    disk_written_per_payload: Option<f64>,
    notes: String,
    /// The rate columns mean nothing for this row (latency).
    #[serde(skip)]
    no_rates: bool,
}

impl Row {
    fn msg_per_s(&self) -> f64 {
        self.messages as f64 / self.seconds.max(1e-9)
    }
    fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.seconds.max(1e-9)
    }
}

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
        if !ALL.contains(&s.as_str()) {
            bail!("unknown scenario {s:?}: expected all or a comma list of {ALL:?}");
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

fn row_line(r: &Row) -> String {
    format!(
        "{}: {} msgs, {:.1} MB in {:.2} s = {:.0} msg/s, {:.1} MB/s{} {}",
        r.scenario,
        r.messages,
        r.bytes as f64 / 1e6,
        r.seconds,
        r.msg_per_s(),
        r.mb_per_s(),
        r.ratio
            .map(|x| format!(", ratio {x:.2}"))
            .unwrap_or_default(),
        r.notes
    )
}

/// One target of the performance issue and the (row, figure) pairs it is judged on.
struct Target {
    name: &'static str,
    figures: Vec<(String, f64)>,
    /// Show only the largest figure (RSS, disk), not every one.
    only_largest: bool,
    unit: &'static str,
    passes: fn(f64) -> bool,
}

impl Target {
    fn each(name: &'static str, figures: Vec<(String, f64)>, passes: fn(f64) -> bool) -> Target {
        Target {
            name,
            figures,
            only_largest: false,
            unit: "",
            passes,
        }
    }

    fn largest(
        name: &'static str,
        figures: Vec<(String, f64)>,
        unit: &'static str,
        passes: fn(f64) -> bool,
    ) -> Target {
        Target {
            name,
            figures,
            only_largest: true,
            unit,
            passes,
        }
    }
}

/// Peak RSS as the table shows it: kB from /proc, MB of 10^6 bytes.
fn mb_of_kb(kb: u64) -> f64 {
    kb as f64 * 1024.0 / 1e6
}

/// The issue's targets, judged from the rows that ran ("not run" for the others). Each target
/// is judged on a list of (row, figure); `worst` shows only the largest figure.
fn targets(rows: &[Row]) -> String {
    let ratios = |prefix: &str| -> Vec<(String, f64)> {
        rows.iter()
            // The variants that are not the default configuration are shown, not judged.
            .filter(|r| r.scenario.starts_with(prefix) && !r.scenario.contains("uncompressed"))
            .filter(|r| !r.scenario.contains(UploaderCase::GRPC.label))
            .filter_map(|r| r.ratio.map(|x| (r.scenario.clone(), x)))
            .collect()
    };
    let rss: Vec<(String, f64)> = rows
        .iter()
        .flat_map(|r| {
            [
                (r.peak_rss_ingester_kb, "ingester"),
                (r.peak_rss_uploader_kb, "uploader"),
            ]
            .into_iter()
            .filter_map(|(kb, daemon)| {
                kb.map(|kb| (format!("{daemon}, {}", r.scenario), mb_of_kb(kb)))
            })
        })
        .collect();
    let disk: Vec<(String, f64)> = rows
        .iter()
        .filter_map(|r| r.disk_written_per_payload.map(|x| (r.scenario.clone(), x)))
        .collect();
    let latency: Vec<(String, f64)> = rows
        .iter()
        .filter(|r| r.scenario.starts_with("latency"))
        .map(|r| ("median".to_string(), r.seconds))
        .collect();
    let judged = [
        Target::each(
            "end to end ≥ 0.8 × baseline (1 KB)",
            ratios("e2e 1 KB"),
            |x| x >= 0.8,
        ),
        Target::each(
            "uploader ≥ 0.8 × bare SDK loop (to stored)",
            ratios("uploader alone, to stored"),
            |x| x >= 0.8,
        ),
        Target::largest("peak RSS ≤ 150 MB per daemon", rss, " MB", |x| x <= 150.0),
        Target::largest("disk written ≤ 2.5 × payload", disk, "", |x| x <= 2.5),
        Target::each(
            "window end → object visible ≤ 1 s + upload",
            latency,
            |x| x <= 1.0,
        ),
    ];
    let mut out = String::from("| target | result | verdict |\n|---|---|---|\n");
    for t in judged {
        let digits = if t.unit.is_empty() { 2 } else { 0 };
        let unit = t.unit;
        let show = |(name, x): &(String, f64)| format!("{x:.digits$}{unit} ({name})");
        let shown: Vec<String> = if t.only_largest {
            t.figures
                .iter()
                .max_by(|a, b| a.1.total_cmp(&b.1))
                .map(|worst| format!("largest {}", show(worst)))
                .into_iter()
                .collect()
        } else {
            t.figures.iter().map(show).collect()
        };
        let verdict = if t.figures.is_empty() {
            "not run"
        } else if t.figures.iter().all(|(_, x)| (t.passes)(*x)) {
            "met"
        } else {
            "missed"
        };
        out.push_str(&format!(
            "| {} | {} | {verdict} |\n",
            t.name,
            shown.join(", ")
        ));
    }
    out
}

fn table(rows: &[Row]) -> String {
    let header = [
        "scenario",
        "messages",
        "MB",
        "seconds",
        "msg/s",
        "MB/s",
        "ratio",
        "peak RSS ingester",
        "peak RSS uploader",
        "disk written/payload",
        "notes",
    ];
    let mb = |kb: Option<u64>| {
        kb.map(|k| format!("{:.0} MB", mb_of_kb(k)))
            .unwrap_or_else(|| "-".into())
    };
    let mut lines = vec![
        format!("| {} |", header.join(" | ")),
        format!("|{}", "---|".repeat(header.len())),
    ];
    for r in rows {
        let rate = |text: String| if r.no_rates { "-".to_string() } else { text };
        let cells = [
            r.scenario.clone(),
            r.messages.to_string(),
            format!("{:.1}", r.bytes as f64 / 1e6),
            format!("{:.2}", r.seconds),
            rate(format!("{:.0}", r.msg_per_s())),
            rate(format!("{:.1}", r.mb_per_s())),
            r.ratio
                .map(|x| format!("{x:.2}"))
                .unwrap_or_else(|| "-".into()),
            mb(r.peak_rss_ingester_kb),
            mb(r.peak_rss_uploader_kb),
            r.disk_written_per_payload
                .map(|x| format!("{x:.2}"))
                .unwrap_or_else(|| "-".into()),
            r.notes.clone(),
        ];
        lines.push(format!("| {} |", cells.join(" | ")));
    }
    lines.join("\n") + "\n"
}

// ---------------------------------------------------------------------------------------------
// Processes and /proc

/// A daemon started by the bench; killed (SIGKILL) and reaped on drop.
struct Proc {
    child: Child,
    log: PathBuf,
    /// The log's length when it started: what this run logs comes after it.
    log_start: u64,
}

impl Proc {
    fn pid(&self) -> u32 {
        self.child.id()
    }
    /// Peak resident set size so far (`VmHWM`), in KiB.
    fn peak_rss_kb(&self) -> Option<u64> {
        proc_status_kb(self.pid(), "VmHWM:")
    }
    /// Bytes this process caused to be sent to the storage layer (`write_bytes`).
    fn write_bytes(&self) -> Option<u64> {
        let text = std::fs::read_to_string(format!("/proc/{}/io", self.pid())).ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix("write_bytes:"))
            .and_then(|v| v.trim().parse().ok())
    }
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let start = text.len().saturating_sub(2000);
        text.get(start..).unwrap_or("").to_string()
    }
    /// Waits until the daemon `name` logs that it is ready; the address it is bound to (it was
    /// started on port 0).
    async fn wait_ready(&mut self, name: &str) -> anyhow::Result<u16> {
        let child = &mut self.child;
        let addr = harness::wait_for_log(
            &self.log,
            self.log_start,
            "its ready line (listen=ADDR)",
            Duration::from_secs(30),
            |log| harness::daemon_log::listen_addr(name, log),
            || Ok(child.try_wait()?),
        )
        .await
        .with_context(|| format!("{name} ({})", self.log.display()))?;
        Ok(addr.port())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// CPU seconds (user + system) a process has used so far; `self` for the bench itself.
fn cpu_seconds(pid: &str) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // USER_HZ is 100 on every Linux this runs on.
    Some(ticks as f64 / 100.0)
}

/// CPU seconds of each process of a stack, to see where a scenario's time goes.
#[derive(Debug, Clone, Copy, Default)]
struct CpuSnapshot {
    ingester: f64,
    uploader: f64,
    broker: f64,
    /// The bench process: relay, in-process S3 server, status polls.
    bench: f64,
}

impl CpuSnapshot {
    fn take(stack: &Stack) -> CpuSnapshot {
        let of = |p: &Option<Proc>| {
            p.as_ref()
                .and_then(|p| cpu_seconds(&p.pid().to_string()))
                .unwrap_or(0.0)
        };
        CpuSnapshot {
            ingester: of(&stack.ingester),
            uploader: of(&stack.uploader),
            broker: stack
                .pulsar
                .pid()
                .and_then(|pid| cpu_seconds(&pid.to_string()))
                .unwrap_or(0.0),
            bench: cpu_seconds("self").unwrap_or(0.0),
        }
    }

    fn since(self, before: CpuSnapshot) -> String {
        format!(
            "CPU s: ingester {:.1}, uploader {:.1}, broker {:.1}, bench (relay + S3 server) {:.1}",
            self.ingester - before.ingester,
            self.uploader - before.uploader,
            self.broker - before.broker,
            self.bench - before.bench,
        )
    }
}

fn proc_status_kb(pid: u32, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

struct Bench {
    bin_dir: PathBuf,
    root: PathBuf,
    /// Messages of the 1 KB baseline / e2e runs (already divided for --quick).
    n: usize,
    /// 10 with --quick, else 1.
    scale: usize,
    /// Stacks started so far (numbers their directories).
    stacks: std::sync::atomic::AtomicUsize,
}

/// What [`Stack::wait_backed_up`] saw.
struct BackedUp {
    statuses: BTreeMap<String, Value>,
    /// When every rule's messages were first all in its spool (or already acknowledged).
    all_spooled: Instant,
    /// The slowest `status` call while waiting (bounds the timing error).
    slowest_poll: Duration,
    /// The ingester's peak RSS (KiB) when everything was first spooled.
    rss_spooled: Option<u64>,
}

/// Broker + S3 server + daemons for one scenario.
struct Stack {
    bin_dir: PathBuf,
    dir: PathBuf,
    pulsar: PulsarLite,
    s3: S3Server,
    ingester: Option<Proc>,
    uploader: Option<Proc>,
    /// The ports the daemons reported (both start on port 0; 0 until started).
    ingester_port: u16,
    uploader_port: u16,
}

impl Bench {
    async fn stack(&self, name: &str) -> anyhow::Result<Stack> {
        self.stack_with(name, false).await
    }

    /// `https`: the S3 server on HTTPS with its own CA, which the uploader trusts through
    /// `SSL_CERT_FILE` and the bench's clients directly.
    async fn stack_with(&self, name: &str, https: bool) -> anyhow::Result<Stack> {
        // Numbered: a scenario may run twice (e2e at 1 KB in `e2e` and in `sizes`).
        let seq = self
            .stacks
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = self.root.join(format!("{seq:02}-{name}"));
        std::fs::create_dir_all(&dir)?;
        let mut pulsar = PulsarLite::start().await?;
        // Extra pulsar-lite settings, prepended to its broker.toml, then the broker is restarted
        // on the same port. With its default write-buffer water marks pulsar-lite stops
        // dispatching 1 MiB messages through the relay after ~20 of them (docs/benchmarks.md);
        // BENCH_BROKER_TOML replaces these settings ("" for the broker's defaults).
        let extra = std::env::var("BENCH_BROKER_TOML").unwrap_or_else(|_| BROKER_TOML.into());
        if !extra.is_empty() {
            let path = pulsar.dir().join("broker.toml");
            let mut config = std::fs::read_to_string(&path)?;
            // Top-level keys must come before the [metrics] table.
            config = format!("{}\n{config}", extra.replace("\\n", "\n"));
            std::fs::write(&path, config)?;
            pulsar.restart().await?;
        }
        let s3 = if https {
            S3Server::start_tls().await?
        } else {
            S3Server::start().await?
        };
        s3.create_bucket(BUCKET).await?;
        s3.create_bucket(BARE_BUCKET).await?;
        Ok(Stack {
            bin_dir: self.bin_dir.clone(),
            dir,
            pulsar,
            s3,
            ingester: None,
            uploader: None,
            ingester_port: 0,
            uploader_port: 0,
        })
    }
}

impl Stack {
    fn spawn(&self, name: &str, args: &[String], envs: &[(&str, String)]) -> anyhow::Result<Proc> {
        let bin = self.bin_dir.join(name);
        let log = self.dir.join(format!("{name}.log"));
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("opening {}", log.display()))?;
        let err = out.try_clone()?;
        let log_start = out.metadata()?.len();
        let child = Command::new(&bin)
            .args(args)
            .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("spawning {}", bin.display()))?;
        Ok(Proc {
            child,
            log,
            log_start,
        })
    }

    async fn start_ingester(&mut self) -> anyhow::Result<()> {
        let args = vec![
            "--data-dir".to_string(),
            self.ingester_data().to_string_lossy().into_owned(),
            "--listen".into(),
            "127.0.0.1:0".into(),
        ];
        let proc = self.spawn(
            "tdmq-backup-ingester",
            &args,
            &[("RUST_LOG", "info,pulsar=warn".into())],
        )?;
        self.ingester_port = self
            .ingester
            .insert(proc)
            .wait_ready("tdmq-backup-ingester")
            .await
            .context("the ingester did not start listening")?;
        Ok(())
    }

    async fn start_uploader(&mut self) -> anyhow::Result<()> {
        self.start_uploader_with(&[]).await
    }

    /// With `extra` flags after the bench's own.
    async fn start_uploader_with(&mut self, extra: &[&str]) -> anyhow::Result<()> {
        let mut args = vec![
            "--ingester".to_string(),
            self.ingester_url(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--state-dir".into(),
            self.dir.join("uploader").to_string_lossy().into_owned(),
            "--endpoint".into(),
            self.s3.endpoint(),
            "--path-style".into(),
            "true".into(),
        ];
        args.extend(extra.iter().map(|a| a.to_string()));
        let mut envs = vec![
            ("AWS_ACCESS_KEY_ID", self.s3.access_key().to_string()),
            ("AWS_SECRET_ACCESS_KEY", self.s3.secret_key().to_string()),
            ("RUST_LOG", "info".to_string()),
        ];
        if let Some(ca) = self.s3.ca_file() {
            envs.push(("SSL_CERT_FILE", ca.to_string_lossy().into_owned()));
        }
        let proc = self.spawn("tdmq-backup-uploader", &args, &envs)?;
        self.uploader_port = self
            .uploader
            .insert(proc)
            .wait_ready("tdmq-backup-uploader")
            .await
            .context("the uploader did not start listening")?;
        Ok(())
    }

    fn ingester_data(&self) -> PathBuf {
        self.dir.join("ingester")
    }

    fn ingester_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.ingester_port)
    }

    fn uploader_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.uploader_port)
    }

    /// `tdmq-backup --ingester URL --uploader URL --output json ARGS`, parsed.
    async fn ctl(&self, args: &[&str]) -> anyhow::Result<Value> {
        let bin = self.bin_dir.join("tdmq-backup");
        let out = tokio::process::Command::new(&bin)
            .arg("--ingester")
            .arg(self.ingester_url())
            .arg("--uploader")
            .arg(self.uploader_url())
            .arg("--output")
            .arg("json")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .await
            .with_context(|| format!("running {}", bin.display()))?;
        if !out.status.success() {
            bail!(
                "tdmq-backup {args:?} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        if out.stdout.iter().all(u8::is_ascii_whitespace) {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&out.stdout).with_context(|| {
            format!(
                "tdmq-backup {args:?} printed no JSON: {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    async fn create_rule(&self, name: &str, topic: &str, extra: &[&str]) -> anyhow::Result<()> {
        let url = self.pulsar.url();
        let endpoint = self.s3.endpoint();
        let mut args = vec![
            "rule",
            "create",
            name,
            "--service-url",
            url.as_str(),
            "--topic",
            topic,
            "--subscription",
            "tdmq-backup",
            "--bucket",
            BUCKET,
            "--region",
            "us-east-1",
            "--endpoint",
            endpoint.as_str(),
        ];
        args.extend_from_slice(extra);
        self.ctl(&args).await.map(|_| ())
    }

    /// Every rule's status, by name.
    async fn statuses(&self) -> anyhow::Result<BTreeMap<String, Value>> {
        let status = self.ctl(&["status"]).await?;
        Ok(status["rules"]
            .as_array()
            .map(|rules| {
                rules
                    .iter()
                    .filter_map(|r| Some((r["name"].as_str()?.to_string(), r.clone())))
                    .collect()
            })
            .unwrap_or_default())
    }

    fn tails(&self) -> String {
        let mut out = String::new();
        for (name, p) in [("ingester", &self.ingester), ("uploader", &self.uploader)] {
            if let Some(p) = p {
                out.push_str(&format!("\n--- {name} log tail:\n{}", p.log_tail()));
            }
        }
        out
    }

    /// Waits until each rule's `expected` messages are acknowledged and its spool is empty.
    /// Seals each rule's open segment once all its messages are spooled (a rule's last segment
    /// would otherwise wait for its window to end), and again every 2 s while not done.
    async fn wait_backed_up(
        &self,
        expected: &BTreeMap<String, u64>,
        timeout: Duration,
    ) -> anyhow::Result<BackedUp> {
        let deadline = Instant::now() + timeout;
        let mut last_flush: BTreeMap<String, Instant> = BTreeMap::new();
        let mut all_spooled: Option<Instant> = None;
        let mut rss_spooled: Option<u64> = None;
        let mut slowest_poll = Duration::ZERO;
        // seconds, then per rule consumed/spooled/acked: written to timeline.csv for analysis.
        let waiting_since = Instant::now();
        let mut timeline = String::from("seconds,rule,consumed,dups,spooled,sealed,acked\n");
        loop {
            let poll_started = Instant::now();
            let statuses = self.statuses().await?;
            slowest_poll = slowest_poll.max(poll_started.elapsed());
            for (rule, s) in &statuses {
                timeline.push_str(&format!(
                    "{:.3},{rule},{},{},{},{},{}\n",
                    waiting_since.elapsed().as_secs_f64(),
                    s["messages_consumed"],
                    s["duplicates_dropped"],
                    s["spooled_messages"],
                    s["sealed_segments"],
                    s["messages_acked"],
                ));
            }
            let mut done = true;
            let mut all_in_everywhere = true;
            for (rule, &want) in expected {
                let s = statuses.get(rule).cloned().unwrap_or(Value::Null);
                let acked = s["messages_acked"].as_u64().unwrap_or(0);
                let spooled = s["spooled_messages"].as_u64().unwrap_or(u64::MAX);
                if acked >= want && spooled == 0 {
                    continue;
                }
                done = false;
                let all_in = spooled != u64::MAX && acked + spooled >= want;
                all_in_everywhere &= all_in;
                let due = last_flush
                    .get(rule)
                    .is_none_or(|t| t.elapsed() > Duration::from_secs(2));
                if all_in && s["open_segment_messages"].as_u64().unwrap_or(0) > 0 && due {
                    self.ctl(&["rule", "flush", rule]).await?;
                    last_flush.insert(rule.clone(), Instant::now());
                }
            }
            if all_in_everywhere && all_spooled.is_none() {
                all_spooled = Some(Instant::now());
                rss_spooled = self.ingester.as_ref().and_then(Proc::peak_rss_kb);
            }
            if done {
                let _ = std::fs::write(self.dir.join("timeline.csv"), &timeline);
                return Ok(BackedUp {
                    all_spooled: all_spooled.unwrap_or_else(Instant::now),
                    statuses,
                    slowest_poll,
                    rss_spooled,
                });
            }
            if Instant::now() > deadline {
                bail!(
                    "not backed up within {timeout:?}: {}{}",
                    serde_json::to_string(&statuses)?,
                    self.tails()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Total size of the objects under the bench bucket.
    async fn stored_bytes(&self) -> anyhow::Result<(u64, u64)> {
        let client = self.s3.client();
        let mut pages = client
            .list_objects_v2()
            .bucket(BUCKET)
            .into_paginator()
            .send();
        let (mut n, mut bytes) = (0u64, 0u64);
        while let Some(page) = pages.next().await {
            for o in page?.contents() {
                n += 1;
                bytes += o.size().unwrap_or(0).max(0) as u64;
            }
        }
        Ok((n, bytes))
    }

    /// Stops the ingester, then checks that nothing is left to deliver on the subscription.
    async fn drained(&mut self, topics: &[String]) -> anyhow::Result<String> {
        self.ingester = None;
        let mut left = 0;
        for topic in topics {
            left += harness::assert_subscription_drained(
                &self.pulsar.url(),
                topic,
                "tdmq-backup",
                Duration::from_millis(1500),
            )
            .await?;
        }
        Ok(if left == 0 {
            "drained".into()
        } else {
            format!("NOT drained: {left} redelivered")
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Messages

/// How many segments the uploader read from each source (`source=X` in its log), e.g.
/// "4 local_file".
fn read_sources(log: &str) -> String {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for source in harness::stored_segment_sources(log) {
        *counts.entry(source).or_default() += 1;
    }
    let parts: Vec<String> = counts.iter().map(|(s, n)| format!("{n} {s}")).collect();
    parts.join(", ")
}

/// The largest `upload_ms=N` in a daemon log (text format, colours or not).
fn max_upload_ms(log: &str) -> Option<u64> {
    log.lines()
        .filter_map(|line| {
            let plain = harness::daemon_log::strip_ansi(line);
            let rest = plain.split("upload_ms=").nth(1)?;
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .max()
}

/// Fixed-size, text (JSON-ish hex) payloads: realistic for gzip, valid UTF-8 (no base64), unique.
struct Payloads {
    noise: Vec<u8>,
}

impl Payloads {
    fn new() -> Payloads {
        let mut rng = rand::rngs::StdRng::seed_from_u64(42);
        let hex = b"0123456789abcdef";
        let noise = (0..4 * MIB).map(|_| hex[rng.gen_range(0..16)]).collect();
        Payloads { noise }
    }

    fn message(&self, index: usize, size: usize) -> SampleMessage {
        let mut payload = format!("{{\"i\":{index},\"d\":\"").into_bytes();
        let body = size.saturating_sub(payload.len() + 2);
        let start = (index.wrapping_mul(7919)) % (self.noise.len() - body.min(self.noise.len()));
        let take = body.min(self.noise.len());
        payload.extend_from_slice(&self.noise[start..start + take]);
        while payload.len() + 2 < size {
            payload.push(b'x');
        }
        payload.extend_from_slice(b"\"}");
        payload.truncate(size.max(1));
        SampleMessage {
            payload,
            key: Some(format!("k{}", index % 16)),
            properties: [("seq".to_string(), index.to_string())].into(),
            event_time: None,
        }
    }
}

/// Produces `count` messages of `size` bytes to `topic` with batching on, in chunks of about
/// 32 MB so the bench itself stays small.
async fn preload(url: &str, topic: &str, count: usize, size: usize) -> anyhow::Result<f64> {
    let payloads = Payloads::new();
    let chunk = (32 * MIB / size.max(1)).clamp(1, 50_000);
    let started = Instant::now();
    let mut i = 0;
    while i < count {
        let end = (i + chunk).min(count);
        let messages: Vec<SampleMessage> = (i..end).map(|j| payloads.message(j, size)).collect();
        harness::produce(url, topic, &messages, true).await?;
        i = end;
    }
    Ok(started.elapsed().as_secs_f64())
}

fn topic_name(stem: &str) -> String {
    format!(
        "persistent://public/default/{stem}-{}",
        rand::random::<u32>()
    )
}

// ---------------------------------------------------------------------------------------------
// Scenarios

impl Bench {
    /// Raw consume + cumulative-ack throughput of pulsar-rs on a preloaded topic.
    async fn baseline(&self, size: usize, count: usize) -> anyhow::Result<Row> {
        let stack = self.stack(&format!("baseline-{size}")).await?;
        let topic = topic_name("baseline");
        let produce_s = preload(&stack.pulsar.url(), &topic, count, size).await?;
        let cpu_before = CpuSnapshot::take(&stack);
        let (seconds, deliveries) = consume_all(&stack.pulsar.url(), &topic, count).await?;
        let cpu = CpuSnapshot::take(&stack);
        Ok(Row {
            scenario: format!("baseline {}", size_label(size)),
            messages: count as u64,
            bytes: (count * size) as u64,
            seconds,
            notes: format!(
                "pulsar-rs Exclusive, cumulative ack /1000; {deliveries} deliveries; CPU s: broker {:.1}, bench (relay + consumer) {:.1}; preload {produce_s:.1} s",
                cpu.broker - cpu_before.broker,
                cpu.bench - cpu_before.bench,
            ),
            ..Default::default()
        })
    }

    /// The 1 KB end-to-end run, then the same uncompressed: how much of the gap to the baseline
    /// is gzip's CPU.
    async fn e2e_with_and_without_gzip(&self, baseline: Option<f64>) -> anyhow::Result<Vec<Row>> {
        let mut rows = self.e2e(KB, self.n, baseline).await?;
        rows.extend(
            self.e2e_rule(
                KB,
                self.n,
                baseline,
                &["--compression", "none"],
                ", uncompressed",
            )
            .await?,
        );
        Ok(rows)
    }

    /// Rule creation → every message stored and acknowledged, on a preloaded topic.
    async fn e2e(
        &self,
        size: usize,
        count: usize,
        baseline: Option<f64>,
    ) -> anyhow::Result<Vec<Row>> {
        self.e2e_rule(size, count, baseline, &[], "").await
    }

    async fn e2e_rule(
        &self,
        size: usize,
        count: usize,
        baseline: Option<f64>,
        rule_args: &[&str],
        label: &str,
    ) -> anyhow::Result<Vec<Row>> {
        let mut stack = self.stack(&format!("e2e-{size}")).await?;
        let topic = topic_name("e2e");
        let produce_s = preload(&stack.pulsar.url(), &topic, count, size).await?;
        stack.start_ingester().await?;
        stack.start_uploader().await?;
        let io_before = (
            stack.ingester.as_ref().and_then(Proc::write_bytes),
            CpuSnapshot::take(&stack),
        );
        let started = Instant::now();
        stack.create_rule("bench", &topic, rule_args).await?;
        let expected = [("bench".to_string(), count as u64)].into();
        let statuses = stack
            .wait_backed_up(&expected, timeout_for(count * size))
            .await?;
        let seconds = started.elapsed().as_secs_f64();
        let mut row = Row {
            scenario: format!("e2e {}{label}", size_label(size)),
            messages: count as u64,
            bytes: (count * size) as u64,
            seconds,
            ..Default::default()
        };
        row.ratio = baseline.map(|b| row.msg_per_s() / b);
        finish_row(
            &mut stack,
            &mut row,
            io_before,
            &[topic],
            started,
            &statuses,
        )
        .await?;
        row.notes = format!("{}; preload {produce_s:.1} s", row.notes);
        Ok(vec![row])
    }

    /// [`Bench::uploader`] `runs` times, each on a fresh stack; see [`median_run`].
    async fn uploader_repeated(&self, case: UploaderCase, runs: u32) -> anyhow::Result<Vec<Row>> {
        let mut all = Vec::new();
        for run in 1..=runs {
            let rows = self.uploader(case).await?;
            if runs > 1 {
                for row in &rows {
                    eprintln!("   run {run}/{runs}: {}", row_line(row));
                }
            }
            all.push(rows);
        }
        Ok(median_run(all))
    }

    /// The uploader alone (segments sealed beforehand) vs a bare aws-sdk-s3 loop, to an S3
    /// server on plain HTTP or HTTPS, reading the sealed files locally or over ReadSegment.
    async fn uploader(&self, case: UploaderCase) -> anyhow::Result<Vec<Row>> {
        let label = case.label;
        let mut stack = self.stack_with(case.name, case.https).await?;
        let topic = topic_name("upl");
        let count = self.n;
        preload(&stack.pulsar.url(), &topic, count, KB).await?;
        stack.start_ingester().await?;
        stack
            .create_rule(
                "bench",
                &topic,
                &["--max-messages", "100000", "--max-bytes", "64MiB"],
            )
            .await?;
        // Spool everything, then seal the open segment.
        let deadline = Instant::now() + timeout_for(count * KB);
        loop {
            let s = stack.statuses().await?.remove("bench").unwrap_or_default();
            if s["spooled_messages"].as_u64().unwrap_or(0) >= count as u64 {
                break;
            }
            if Instant::now() > deadline {
                bail!("spooling did not finish: {s}{}", stack.tails());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        stack.ctl(&["rule", "flush", "bench"]).await?;
        // Wait until every segment is sealed (nothing open or closed-but-unsealed).
        let segments = loop {
            let v = stack.ctl(&["segments", "bench"]).await?;
            let list = v["segments"].as_array().cloned().unwrap_or_default();
            let all_sealed = !list.is_empty() && list.iter().all(|s| s["state"] == "sealed");
            if all_sealed {
                break list;
            }
            if Instant::now() > deadline {
                bail!("segments were not sealed: {v}{}", stack.tails());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let seg_dir = stack.ingester_data().join("segments").join("bench");
        let mut files: Vec<Vec<u8>> = Vec::new();
        for entry in
            std::fs::read_dir(&seg_dir).with_context(|| format!("reading {}", seg_dir.display()))?
        {
            let path = entry?.path();
            // Sealed segment files only: the record logs (`.log`) sit in the same folder.
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            if path.is_file() && (name.ends_with(".jsonl.gz") || name.ends_with(".jsonl")) {
                files.push(std::fs::read(&path)?);
            }
        }
        let listed_bytes: u64 = segments
            .iter()
            .map(|s| s["file_bytes"].as_u64().unwrap_or(0))
            .sum();
        let file_bytes: u64 = files.iter().map(|f| f.len() as u64).sum();
        if files.len() != segments.len() || file_bytes != listed_bytes {
            eprintln!(
                "   note: {} files ({file_bytes} B) in {} vs {} sealed segments ({listed_bytes} B)",
                files.len(),
                seg_dir.display(),
                segments.len()
            );
        }

        let rss_spooled = stack.ingester.as_ref().and_then(Proc::peak_rss_kb);
        // Both timed phases (the uploader's and the bare loop's) start with no dirty page cache
        // left by what came before them, so neither pays the other's writeback.
        flush_page_cache().await;
        let started = Instant::now();
        let read_local = if case.read_local { "true" } else { "false" };
        stack
            .start_uploader_with(&["--read-local", read_local])
            .await?;
        // The objects' arrival is watched in the store itself (a cheap in-process ListObjects),
        // as `status` answers slowly while the ingester acknowledges and frees the spool.
        let mut stored_s: Option<f64> = None;
        let store = stack.s3.client();
        loop {
            if stored_s.is_none() {
                let listed = store.list_objects_v2().bucket(BUCKET).send().await?;
                if listed.contents().len() >= segments.len() {
                    stored_s = Some(started.elapsed().as_secs_f64());
                }
                if started.elapsed() > timeout_for(count * KB) {
                    bail!("the objects did not appear{}", stack.tails());
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
            let s = stack.statuses().await?.remove("bench").unwrap_or_default();
            if s["sealed_segments"].as_u64() == Some(0) && s["spooled_messages"].as_u64() == Some(0)
            {
                break;
            }
            if started.elapsed() > timeout_for(count * KB) {
                bail!("uploads did not finish: {s}{}", stack.tails());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let seconds = started.elapsed().as_secs_f64();
        let rss_u = stack.uploader.as_ref().and_then(Proc::peak_rss_kb);
        let rss_i = stack.ingester.as_ref().and_then(Proc::peak_rss_kb);
        // The segments upload side by side: the slowest one's read → stored time is the
        // uploader's own share, without its process start and first ListSealed.
        let uploader_log = stack
            .uploader
            .as_ref()
            .and_then(|u| std::fs::read_to_string(&u.log).ok())
            .unwrap_or_default();
        let upload_s = max_upload_ms(&uploader_log).map(|ms| ms as f64 / 1000.0);
        let sources = read_sources(&uploader_log);
        stack.uploader = None;
        stack.ingester = None;

        flush_page_cache().await;
        let bare_s = bare_sdk_loop(&stack.s3.client(), &files).await?;
        let sizes: Vec<String> = files
            .iter()
            .map(|f| format!("{:.1}", f.len() as f64 / 1e6))
            .collect();
        let bare = Row {
            scenario: format!("bare SDK PUT/multipart{label}"),
            messages: count as u64,
            bytes: file_bytes,
            seconds: bare_s,
            notes: format!(
                "aws-sdk-s3, {} objects [{} MB], multipart > 8 MiB (8 MiB parts), {UPLOAD_CONCURRENCY} at once",
                files.len(),
                sizes.join(", ")
            ),
            ..Default::default()
        };
        let stored_s = stored_s.unwrap_or(seconds);
        let upl = Row {
            scenario: format!("uploader alone{label}"),
            messages: count as u64,
            bytes: file_bytes,
            seconds,
            ratio: Some(bare_s / seconds),
            peak_rss_ingester_kb: rss_i,
            peak_rss_uploader_kb: rss_u,
            notes: format!(
                "{} sealed segments; uploader start → all committed, acked and freed (spool empty); MB = object bytes; ingester peak RSS before the uploader started: {}",
                segments.len(),
                rss_spooled.map(|k| format!("{:.0} MB", mb_of_kb(k))).unwrap_or_default()
            ),
            ..Default::default()
        };
        let committed = Row {
            scenario: format!("uploader alone, to stored{label}"),
            seconds: stored_s,
            ratio: Some(bare_s / stored_s),
            notes: format!(
                "uploader start → every object listed in the store (ListObjects every 20 ms; commit, ack and free not included); segments read from: {sources}{}",
                upload_s
                    .map(|u| format!(
                        "; the uploads themselves (slowest segment's upload_ms in the uploader's log) took {u:.2} s = {:.2} × the bare loop's speed, the rest is process start and first ListSealed",
                        bare_s / u
                    ))
                    .unwrap_or_default()
            ),
            ..upl.clone()
        };
        Ok(vec![upl, committed, bare])
    }

    /// Window end → object visible, with a 2 s window and a slow steady producer.
    async fn latency(&self) -> anyhow::Result<Row> {
        let mut stack = self.stack("latency").await?;
        let topic = topic_name("lat");
        stack.start_ingester().await?;
        stack.start_uploader().await?;
        let window_ms: u64 = 2000;
        // Create the topic first and wait until the rule's consumer got a message: with
        // pulsar-lite a consumer that subscribed before the topic existed may not be
        // dispatched to until it reconnects, which would measure the broker, not the backup.
        preload(&stack.pulsar.url(), &topic, 1, KB).await?;
        stack
            .create_rule("bench", &topic, &["--window", "2s"])
            .await?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let s = stack.statuses().await?.remove("bench").unwrap_or_default();
            if s["messages_consumed"].as_u64().unwrap_or(0) >= 1 {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "the rule consumed nothing within 60 s: {s}{}",
                    stack.tails()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let first_window_end = {
            let now = now_ms();
            now - now % window_ms + window_ms
        };
        let run_for = Duration::from_secs(if self.scale > 1 { 10 } else { 30 });
        let url = stack.pulsar.url();
        let producer_topic = topic.clone();
        let producer = tokio::spawn(async move {
            steady_produce(&url, &producer_topic, run_for, Duration::from_millis(50)).await
        });
        let client = stack.s3.client();
        let mut seen: BTreeMap<String, u64> = BTreeMap::new();
        // Poll until the producer has finished and two more windows have passed.
        let give_up = Instant::now() + run_for + Duration::from_secs(120);
        let mut producer_done: Option<Instant> = None;
        loop {
            if producer_done.is_none() && producer.is_finished() {
                producer_done = Some(Instant::now());
            }
            let settled = producer_done
                .is_some_and(|t| t.elapsed() > Duration::from_millis(2 * window_ms + 1500));
            if settled || Instant::now() > give_up {
                break;
            }
            let listed = client.list_objects_v2().bucket(BUCKET).send().await?;
            let now = now_ms();
            for o in listed.contents() {
                if let Some(key) = o.key() {
                    seen.entry(key.to_string()).or_insert(now);
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let sent = producer.await??;
        let mut latencies: Vec<f64> = Vec::new();
        for (key, at) in &seen {
            let start = window_start_from_key(key, "bench")
                .with_context(|| format!("no window start in object key {key}"))?;
            if start + window_ms <= first_window_end {
                // The window of the set-up message.
                continue;
            }
            let end = start + window_ms;
            latencies.push((*at as f64 - end as f64) / 1000.0);
        }
        latencies.sort_by(f64::total_cmp);
        // The first window was entered part way and the last may be cut short: keep them all,
        // since every one of them ends at its window boundary all the same.
        if latencies.is_empty() {
            bail!("no object appeared{}", stack.tails());
        }
        let median = latencies[latencies.len() / 2];
        let max = latencies[latencies.len() - 1];
        let rss_i = stack.ingester.as_ref().and_then(Proc::peak_rss_kb);
        let rss_u = stack.uploader.as_ref().and_then(Proc::peak_rss_kb);
        Ok(Row {
            scenario: "latency window end → visible".into(),
            messages: sent as u64,
            bytes: (sent * KB) as u64,
            seconds: median,
            no_rates: true,
            peak_rss_ingester_kb: rss_i,
            peak_rss_uploader_kb: rss_u,
            notes: format!(
                "seconds = median; median {median:.2} s, max {max:.2} s, min {:.2} s over {} windows (2 s window, 20 msg/s, ListObjects every 50 ms)",
                latencies[0],
                latencies.len()
            ),
            ..Default::default()
        })
    }

    /// End to end (and its baseline) at 100 B, 1 KB, 10 KB and 100 KB messages.
    async fn sizes(&self) -> anyhow::Result<Vec<Row>> {
        let mut rows = Vec::new();
        // ~50-100 MB per run at the default --messages 200000.
        for (size, count) in [
            (100, self.n * 5 / 2),
            (KB, self.n / 2),
            (10 * KB, self.n / 20),
            (100 * KB, self.n / 200),
        ] {
            let count = count.max(10);
            let base = self.baseline(size, count).await?;
            eprintln!("   {}", row_line(&base));
            let e2e = self.e2e(size, count, Some(base.msg_per_s())).await?;
            rows.push(base);
            rows.extend(e2e);
        }
        Ok(rows)
    }

    /// 1, 4 and 16 rules at once, each on its own preloaded topic; the same total messages.
    async fn rules(&self) -> anyhow::Result<Vec<Row>> {
        let mut rows = Vec::new();
        let total = self.n / 2;
        for rules in [1usize, 4, 16] {
            let mut stack = self.stack(&format!("rules-{rules}")).await?;
            let per_rule = total / rules;
            let topics: Vec<String> = (0..rules).map(|i| topic_name(&format!("r{i}"))).collect();
            let url = stack.pulsar.url();
            futures::future::try_join_all(
                topics
                    .iter()
                    .map(|topic| preload(&url, topic, per_rule, KB)),
            )
            .await?;
            stack.start_ingester().await?;
            stack.start_uploader().await?;
            let io_before = (
                stack.ingester.as_ref().and_then(Proc::write_bytes),
                CpuSnapshot::take(&stack),
            );
            let started = Instant::now();
            let mut expected = BTreeMap::new();
            for (i, topic) in topics.iter().enumerate() {
                let name = format!("bench{i}");
                stack.create_rule(&name, topic, &[]).await?;
                expected.insert(name, per_rule as u64);
            }
            let statuses = stack
                .wait_backed_up(&expected, timeout_for(total * KB))
                .await?;
            let seconds = started.elapsed().as_secs_f64();
            let mut row = Row {
                scenario: format!("rules ×{rules}"),
                messages: (per_rule * rules) as u64,
                bytes: (per_rule * rules * KB) as u64,
                seconds,
                ..Default::default()
            };
            finish_row(&mut stack, &mut row, io_before, &topics, started, &statuses).await?;
            row.notes = format!("{per_rule} × 1 KB per rule; {}", row.notes);
            rows.push(row);
        }
        Ok(rows)
    }

    /// One ~500 MB segment (max_bytes 500MB) of 1 MiB messages, streamed end to end.
    async fn big(&self) -> anyhow::Result<Vec<Row>> {
        // 470 × 1 MiB records (~1.05 MB each as JSON) stay under max_bytes = 500 MB: one segment.
        let count = 470 / self.scale;
        let base = self.baseline(MIB, count).await?;
        let mut stack = self.stack("big").await?;
        let topic = topic_name("big");
        let max_bytes = if self.scale > 1 { "50MB" } else { "500MB" };
        let produce_s = preload(&stack.pulsar.url(), &topic, count, MIB).await?;
        stack.start_ingester().await?;
        stack.start_uploader().await?;
        let io_before = (
            stack.ingester.as_ref().and_then(Proc::write_bytes),
            CpuSnapshot::take(&stack),
        );
        let started = Instant::now();
        stack
            .create_rule(
                "bench",
                &topic,
                &["--max-bytes", max_bytes, "--max-messages", "1000000"],
            )
            .await?;
        let expected = [("bench".to_string(), count as u64)].into();
        let statuses = stack
            .wait_backed_up(&expected, timeout_for(count * MIB) * 2)
            .await?;
        let seconds = started.elapsed().as_secs_f64();
        let mut row = Row {
            scenario: format!("big segment ({max_bytes})"),
            messages: count as u64,
            bytes: (count * MIB) as u64,
            seconds,
            ..Default::default()
        };
        finish_row(
            &mut stack,
            &mut row,
            io_before,
            &[topic],
            started,
            &statuses,
        )
        .await?;
        row.ratio = Some(row.msg_per_s() / base.msg_per_s());
        row.notes = format!("1 MiB messages; {}; preload {produce_s:.1} s", row.notes);
        Ok(vec![base, row])
    }
}

/// Fills in RSS, disk written and notes after a timed run, then stops the daemons and checks the
/// subscriptions are drained.
async fn finish_row(
    stack: &mut Stack,
    row: &mut Row,
    before: (Option<u64>, CpuSnapshot),
    topics: &[String],
    started: Instant,
    backed: &BackedUp,
) -> anyhow::Result<()> {
    let (io_before, cpu_before) = before;
    let cpu = CpuSnapshot::take(stack).since(cpu_before);
    let spooled_s = backed
        .all_spooled
        .saturating_duration_since(started)
        .as_secs_f64();
    let (objects, object_bytes) = stack.stored_bytes().await?;
    row.peak_rss_ingester_kb = stack.ingester.as_ref().and_then(Proc::peak_rss_kb);
    row.peak_rss_uploader_kb = stack.uploader.as_ref().and_then(Proc::peak_rss_kb);
    let io_after = stack.ingester.as_ref().and_then(Proc::write_bytes);
    if let (Some(before), Some(after)) = (io_before, io_after) {
        row.disk_written_per_payload = Some((after - before) as f64 / row.bytes.max(1) as f64);
    }
    let dups: u64 = backed
        .statuses
        .values()
        .map(|s| s["duplicates_dropped"].as_u64().unwrap_or(0))
        .sum();
    stack.uploader = None;
    let drained = stack.drained(topics).await?;
    row.notes = format!(
        "all spooled at {spooled_s:.1} s (slowest status poll {:.2} s; ingester peak RSS by then {}); {objects} objects, {:.1} MB stored; {dups} dups dropped; {drained}; {cpu}",
        backed.slowest_poll.as_secs_f64(),
        backed
            .rss_spooled
            .map(|k| format!("{:.0} MB", mb_of_kb(k)))
            .unwrap_or_default(),
        object_bytes as f64 / 1e6
    );
    Ok(())
}

/// Generous time limits: 1 MB/s at worst, and at least 2 minutes.
fn timeout_for(bytes: usize) -> Duration {
    Duration::from_secs((bytes as u64 / 1_000_000).max(120))
}

fn size_label(size: usize) -> String {
    match size {
        s if s >= MIB && s % MIB == 0 => format!("{} MiB", s / MIB),
        s if s >= KB && s % KB == 0 => format!("{} KB", s / KB),
        s => format!("{s} B"),
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The window start (ms since the epoch) in an object key `…/{rule}-YYYYMMDDTHHMMSSZ-…`.
fn window_start_from_key(key: &str, rule: &str) -> Option<u64> {
    let name = key.rsplit('/').next()?;
    let rest = name.strip_prefix(rule)?.strip_prefix('-')?;
    let stamp = rest.get(..16)?;
    let t = chrono::NaiveDateTime::parse_from_str(stamp, "%Y%m%dT%H%M%SZ").ok()?;
    u64::try_from(t.and_utc().timestamp_millis()).ok()
}

/// Drains `count` unique messages with a pulsar-rs consumer like the ingester's (Exclusive,
/// Earliest, receive queue 1000), acknowledging cumulatively every 1000 messages. Returns the
/// seconds from subscribing to the last unique message acknowledged, and the deliveries seen
/// (pulsar-lite redelivers some).
async fn consume_all(url: &str, topic: &str, count: usize) -> anyhow::Result<(f64, u64)> {
    let started = Instant::now();
    let pulsar = harness::producer::client(url).await?;
    let mut consumer: Consumer<Vec<u8>, TokioExecutor> = pulsar
        .consumer()
        .with_topic(topic)
        .with_subscription("baseline")
        .with_subscription_type(SubType::Exclusive)
        .with_consumer_name("bench-baseline")
        .with_batch_size(1000)
        .with_options(ConsumerOptions::default().with_initial_position(InitialPosition::Earliest))
        .build()
        .await
        .context("subscribing the baseline consumer")?;
    let mut seen: HashSet<(u64, u64, i32)> = HashSet::with_capacity(count);
    let mut deliveries = 0u64;
    let mut since_ack = 0;
    while seen.len() < count {
        let message = tokio::time::timeout(Duration::from_secs(30), consumer.next())
            .await
            .with_context(|| format!("no message for 30 s after {} of {count}", seen.len()))?
            .context("the consumer stream ended")?
            .context("receiving")?;
        deliveries += 1;
        let id = message.message_id();
        seen.insert((id.ledger_id, id.entry_id, id.batch_index.unwrap_or(-1)));
        since_ack += 1;
        if since_ack >= 1000 || seen.len() >= count {
            consumer.cumulative_ack(&message).await?;
            since_ack = 0;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    drop(consumer);
    Ok((seconds, deliveries))
}

/// Sends one 1 KB message every `every` for `run_for`, waiting for each receipt. Returns how
/// many were sent.
async fn steady_produce(
    url: &str,
    topic: &str,
    run_for: Duration,
    every: Duration,
) -> anyhow::Result<usize> {
    let pulsar = harness::producer::client(url).await?;
    let mut producer = pulsar
        .producer()
        .with_topic(topic)
        .with_name("bench-steady")
        .build()
        .await
        .context("creating the steady producer")?;
    let payloads = Payloads::new();
    let started = Instant::now();
    let mut tick = tokio::time::interval(every);
    let mut sent = 0;
    while started.elapsed() < run_for {
        tick.tick().await;
        producer
            .send_non_blocking(payloads.message(sent, KB).to_pulsar())
            .await?
            .await?;
        sent += 1;
    }
    Ok(sent)
}

/// PUTs `objects` (multipart above 8 MiB, 8 MiB parts), `UPLOAD_CONCURRENCY` at a time.
/// Writes every dirty page to disk (`sync`): a timed phase should not pay for the writeback of
/// the one before it. Best effort: without `sync` the phase just starts.
async fn flush_page_cache() {
    if let Err(err) = tokio::process::Command::new("sync").status().await {
        eprintln!("   note: sync failed: {err}");
    }
}

/// Of several runs of the same scenario, the rows of the run whose "to stored" ratio is the
/// median, with every run's ratio (and bare-loop time) added to the notes.
fn median_run(mut runs: Vec<Vec<Row>>) -> Vec<Row> {
    if runs.len() < 2 {
        return runs.pop().unwrap_or_default();
    }
    let to_stored = |rows: &[Row]| {
        rows.iter()
            .find(|r| r.scenario.contains("to stored"))
            .and_then(|r| r.ratio)
            .unwrap_or(0.0)
    };
    let bare_s = |rows: &[Row]| {
        rows.iter()
            .find(|r| r.scenario.starts_with("bare"))
            .map_or(0.0, |r| r.seconds)
    };
    runs.sort_by(|a, b| to_stored(a).total_cmp(&to_stored(b)));
    let ratios: Vec<String> = runs
        .iter()
        .map(|r| format!("{:.2}", to_stored(r)))
        .collect();
    let bares: Vec<String> = runs.iter().map(|r| format!("{:.2}", bare_s(r))).collect();
    let n = runs.len();
    let mut median = runs.swap_remove(n / 2);
    for row in &mut median {
        row.notes.push_str(&format!(
            "; the median of {n} runs by the to-stored ratio (to stored: {}; bare loop: {} s)",
            ratios.join(" / "),
            bares.join(" / ")
        ));
    }
    median
}

async fn bare_sdk_loop(client: &aws_sdk_s3::Client, objects: &[Vec<u8>]) -> anyhow::Result<f64> {
    let objects: Vec<Arc<Vec<u8>>> = objects.iter().cloned().map(Arc::new).collect();
    let started = Instant::now();
    let results: Vec<anyhow::Result<()>> = futures::stream::iter(objects.into_iter().enumerate())
        .map(|(i, body)| {
            let client = client.clone();
            async move { put_one(&client, &format!("bare/{i}.bin"), body).await }
        })
        .buffer_unordered(UPLOAD_CONCURRENCY)
        .collect()
        .await;
    for r in results {
        r?;
    }
    Ok(started.elapsed().as_secs_f64())
}

async fn put_one(client: &aws_sdk_s3::Client, key: &str, body: Arc<Vec<u8>>) -> anyhow::Result<()> {
    if body.len() <= PART_SIZE {
        client
            .put_object()
            .bucket(BARE_BUCKET)
            .key(key)
            .body(ByteStream::from(body.to_vec()))
            .send()
            .await
            .with_context(|| format!("PUT {key}"))?;
        return Ok(());
    }
    let upload = client
        .create_multipart_upload()
        .bucket(BARE_BUCKET)
        .key(key)
        .send()
        .await
        .with_context(|| format!("CreateMultipartUpload {key}"))?;
    let upload_id = upload.upload_id().context("no upload id")?.to_string();
    let mut parts = Vec::new();
    for (i, chunk) in body.chunks(PART_SIZE).enumerate() {
        let number = i32::try_from(i + 1)?;
        let part = client
            .upload_part()
            .bucket(BARE_BUCKET)
            .key(key)
            .upload_id(&upload_id)
            .part_number(number)
            .body(ByteStream::from(chunk.to_vec()))
            .send()
            .await
            .with_context(|| format!("UploadPart {key} #{number}"))?;
        parts.push(
            CompletedPart::builder()
                .set_e_tag(part.e_tag().map(str::to_string))
                .part_number(number)
                .build(),
        );
    }
    client
        .complete_multipart_upload()
        .bucket(BARE_BUCKET)
        .key(key)
        .upload_id(&upload_id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .set_parts(Some(parts))
                .build(),
        )
        .send()
        .await
        .with_context(|| format!("CompleteMultipartUpload {key}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table line of `text` whose first cell starts with `start`.
    fn line_starting(text: &str, start: &str) -> String {
        text.lines()
            .find(|l| l.starts_with(&format!("| {start}")))
            .unwrap_or_default()
            .to_string()
    }

    #[test]
    fn targets_are_judged_from_the_rows_that_ran() {
        let rows = vec![
            Row {
                scenario: "e2e 1 KB".into(),
                ratio: Some(0.39),
                peak_rss_ingester_kb: Some(170_000),
                peak_rss_uploader_kb: Some(30_000),
                disk_written_per_payload: Some(1.62),
                ..Row::default()
            },
            Row {
                scenario: "e2e 1 KB, uncompressed".into(),
                ratio: Some(0.2),
                ..Row::default()
            },
            Row {
                scenario: "e2e 100 B".into(),
                ratio: Some(0.9),
                disk_written_per_payload: Some(2.3),
                ..Row::default()
            },
        ];
        let text = targets(&rows);
        let line = |start: &str| line_starting(&text, start);
        let e2e = line("end to end");
        assert!(
            e2e.contains("0.39 (e2e 1 KB)") && e2e.ends_with("| missed |"),
            "{e2e}"
        );
        assert!(
            !e2e.contains("0.20"),
            "the uncompressed variant is not the target: {e2e}"
        );
        assert!(line("uploader").ends_with("| not run |"));
        let mut with_uploads = rows.clone();
        with_uploads.extend([
            Row {
                scenario: "uploader alone, to stored".into(),
                ratio: Some(0.86),
                ..Row::default()
            },
            Row {
                scenario: "uploader alone, to stored, over gRPC".into(),
                ratio: Some(0.7),
                ..Row::default()
            },
        ]);
        let uploader = line_starting(&targets(&with_uploads), "uploader");
        assert!(
            uploader.contains("0.86")
                && !uploader.contains("0.70")
                && uploader.ends_with("| met |"),
            "the gRPC variant is shown in the table, not judged: {uploader}"
        );
        let rss = line("peak RSS");
        assert!(
            rss.contains("largest 174 MB (ingester, e2e 1 KB)") && rss.ends_with("| missed |"),
            "{rss}"
        );
        let disk = line("disk");
        assert!(
            disk.contains("largest 2.30 (e2e 100 B)") && disk.ends_with("| met |"),
            "{disk}"
        );
        assert!(line("window end").ends_with("| not run |"));
    }

    #[test]
    fn median_run_picks_the_middle_ratio_and_lists_them_all() {
        let run = |stored: f64, bare: f64| {
            vec![
                Row {
                    scenario: "uploader alone".into(),
                    ratio: Some(stored - 0.02),
                    ..Row::default()
                },
                Row {
                    scenario: "uploader alone, to stored".into(),
                    ratio: Some(stored),
                    ..Row::default()
                },
                Row {
                    scenario: "bare SDK PUT/multipart".into(),
                    seconds: bare,
                    ..Row::default()
                },
            ]
        };
        let picked = median_run(vec![run(0.78, 0.41), run(0.66, 0.40), run(0.74, 0.43)]);
        assert_eq!(picked[1].ratio, Some(0.74));
        assert_eq!(picked[2].seconds, 0.43);
        assert!(
            picked[1].notes.contains("to stored: 0.66 / 0.74 / 0.78"),
            "{}",
            picked[1].notes
        );
        assert!(picked[2].notes.contains("bare loop: 0.40 / 0.43 / 0.41 s"));
        let single = median_run(vec![run(0.7, 0.4)]);
        assert!(single[1].notes.is_empty());
    }

    #[test]
    fn window_start_is_read_from_the_key() {
        let key =
            "public/default/t/2026/11/24/02/bench-20261124T024002Z-12_34_-1_0-5f3a9c01.jsonl.gz";
        // 2026-11-24T02:40:02Z
        assert_eq!(window_start_from_key(key, "bench"), Some(1_795_488_002_000));
        assert_eq!(window_start_from_key(key, "other"), None);
    }

    #[test]
    fn upload_ms_is_read_from_coloured_and_plain_logs() {
        let log =
            "x \u{1b}[3mupload_ms\u{1b}[0m\u{1b}[2m=\u{1b}[0m508 \u{1b}[3mattempt\u{1b}[0m=1\n\
                   y upload_ms=546 attempt=1\nz no timing here\n";
        assert_eq!(max_upload_ms(log), Some(546));
        assert_eq!(max_upload_ms("nothing"), None);
        let log = "a segment stored and committed upload_ms=5 source=local_file attempt=1\n\
                   b segment stored and committed upload_ms=6 \u{1b}[3msource\u{1b}[0m\u{1b}[2m=\u{1b}[0mlocal_file x\n\
                   c segment stored and committed upload_ms=7 source=ingester attempt=2\n\
                   d retrying source=ingester\n";
        assert_eq!(read_sources(log), "1 ingester, 2 local_file");
    }

    #[test]
    fn payloads_have_the_asked_size_and_are_unique() {
        let p = Payloads::new();
        for size in [100, KB, 10 * KB, 100 * KB, MIB] {
            let a = p.message(1, size);
            let b = p.message(2, size);
            assert_eq!(a.payload.len(), size);
            assert_ne!(a.payload, b.payload);
            assert!(std::str::from_utf8(&a.payload).is_ok());
        }
    }
}
