//! What `/metrics` tells an on-call, checked against a real backup of two rules: the per-rule
//! series agree with what is in the store, build and process metrics are there, a deleted
//! rule's series leave both daemons; and the docs and the deploy files name only metrics the
//! daemons expose (and the docs every one they expose), so neither can rot.
//!
//! One backup serves the three tests ([`run`]): it is the slow part, and what each test reads
//! from it (scrapes, the store's objects) is plain data.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use harness::{http, produce, read_all, sample_messages};
use tokio::sync::OnceCell;

use crate::util::{unique_topic, Extra, Stack, BUCKET};

const KEPT: &str = "orders-m";
const DELETED: &str = "refunds-m";

/// Metrics the daemons expose only in some setups, so a backup against the test services cannot
/// show them; each with why. Everything else in the docs table must be in a scrape.
const ONLY_SOMETIMES: [(&str, &str); 1] = [(
    "tdmq_backup_ingester_broker_backlog_messages",
    "only for brokers that answer consumer stats; pulsar-lite does not (its rendering is covered by the ingester's unit test)",
)];

/// The names a query uses for each family of the scrape, from its `# TYPE` lines: a counter's
/// samples end in `_total`, an info's in `_info`; a histogram is queried by its `_bucket`,
/// `_sum` and `_count` but documented by its own name.
fn families(body: &str) -> BTreeMap<String, String> {
    body.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .map(|(name, kind)| {
            let queried = match kind {
                "counter" => format!("{name}_total"),
                "info" => format!("{name}_info"),
                _ => name.to_string(),
            };
            (queried, kind.to_string())
        })
        .collect()
}

/// Every sample name in the scrape (`_bucket`, `_total` … included).
fn sample_names(body: &str) -> BTreeSet<String> {
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

/// The metric names `text` mentions: words starting `tdmq_backup_` or `process_`.
fn metric_names_in(text: &str) -> BTreeSet<String> {
    let is_word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    text.split(|c: char| !is_word(c))
        .filter(|w| w.starts_with("tdmq_backup_") || w.starts_with("process_"))
        .map(str::to_string)
        .collect()
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// What one backup of two rules left to check.
struct Run {
    ingester: String,
    uploader: String,
    /// Both daemons once the DELETED rule is gone.
    ingester_after_delete: String,
    uploader_after_delete: String,
    /// Per rule: the objects in the store and the sum of their sizes.
    stored: BTreeMap<String, (usize, u64)>,
    /// Per rule: the payload bytes produced.
    payload_bytes: BTreeMap<String, u64>,
    /// Unix seconds before the rules were created and after the last object was stored.
    started: f64,
    finished: f64,
}

static RUN: OnceCell<Result<Run, String>> = OnceCell::const_new();

/// The shared backup; an error is every test's error.
async fn run() -> anyhow::Result<&'static Run> {
    RUN.get_or_init(|| async { backup_two_rules().await.map_err(|e| format!("{e:#}")) })
        .await
        .as_ref()
        .map_err(|e| anyhow::anyhow!("the two-rule backup failed: {e}"))
}

async fn backup_two_rules() -> anyhow::Result<Run> {
    let mut stack = Stack::services().await?;
    let metrics = Extra {
        args: vec!["--metrics-listen".into(), "127.0.0.1:0".into()],
        env: Vec::new(),
    };
    stack.ingester_extra = metrics.clone();
    stack.uploader_extra = metrics;
    stack.start_ingester().await?;
    stack.start_uploader().await?;
    let ingester_metrics = stack
        .ingester
        .as_mut()
        .context("the ingester")?
        .wait_metrics_addr(Duration::from_secs(20))
        .await?;
    let uploader_metrics = stack
        .uploader
        .as_mut()
        .context("the uploader")?
        .wait_metrics_addr(Duration::from_secs(20))
        .await?;

    let started = unix_now();
    let mut payload_bytes = BTreeMap::new();
    for (rule, n, seed) in [(KEPT, 300, 11), (DELETED, 200, 12)] {
        let topic = unique_topic(rule);
        let messages = sample_messages(n, seed);
        produce(
            &stack.pulsar.url(),
            &format!("persistent://public/default/{topic}"),
            &messages,
            true,
        )
        .await?;
        payload_bytes.insert(
            rule.to_string(),
            messages.iter().map(|m| m.payload.len() as u64).sum(),
        );
        // A long window and small segments: several objects per rule, cut by count.
        stack.create_rule(rule, &topic, &["--window", "1h", "--max-messages", "80"])?;
        stack
            .wait_until_backed_up(rule, n as u64, Duration::from_secs(180))
            .await?;
    }
    let finished = unix_now();

    let mut stored: BTreeMap<String, (usize, u64)> = BTreeMap::new();
    for object in read_all(&stack.s3.client(), BUCKET, "").await? {
        let rule = object.metadata.get("rule").cloned().unwrap_or_default();
        let entry = stored.entry(rule).or_default();
        entry.0 += 1;
        entry.1 += object.content_length;
    }
    let ingester = http::metrics(ingester_metrics).await?;
    let uploader = http::metrics(uploader_metrics).await?;

    let out = stack.ctl(&["rule", "delete", DELETED]);
    if !out.status.success() {
        bail!(
            "rule delete {DELETED}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let label = format!("rule=\"{DELETED}\"");
    let mut gone = Vec::new();
    for addr in [ingester_metrics, uploader_metrics] {
        // The uploader learns of the deletion from its next ListSealed (a second or so).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let body = http::metrics(addr).await?;
            if !body.contains(&label) {
                gone.push(body);
                break;
            }
            if tokio::time::Instant::now() > deadline {
                bail!("{DELETED}'s series still in {addr}'s /metrics 30 s after the rule was deleted:\n{body}");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    let uploader_after_delete = gone.pop().unwrap_or_default();
    let ingester_after_delete = gone.pop().unwrap_or_default();
    Ok(Run {
        ingester,
        uploader,
        ingester_after_delete,
        uploader_after_delete,
        stored,
        payload_bytes,
        started,
        finished,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_rule_series_match_the_store_and_a_deleted_rule_leaves_both_daemons(
) -> anyhow::Result<()> {
    let run = run().await?;
    let (ingester, uploader) = (&run.ingester, &run.uploader);
    for rule in [KEPT, DELETED] {
        let l = format!("{{rule=\"{rule}\"}}");
        let &(objects, bytes) = run
            .stored
            .get(rule)
            .with_context(|| format!("no object of {rule} in {:?}", run.stored))?;
        assert!(objects >= 2, "{rule}: {objects} objects");
        let objects = objects as f64;
        assert_eq!(
            http::sample(
                uploader,
                &format!("tdmq_backup_uploader_segments_uploaded_total{l}")
            )?,
            objects,
            "{rule}: stored objects\n{uploader}"
        );
        assert_eq!(
            http::sample(
                uploader,
                &format!("tdmq_backup_uploader_uploaded_bytes_total{l}")
            )?,
            bytes as f64,
            "{rule}: stored bytes\n{uploader}"
        );
        assert_eq!(
            http::sample(
                uploader,
                &format!("tdmq_backup_uploader_upload_failures_total{l}")
            )?,
            0.0
        );
        assert_eq!(
            http::sample(
                ingester,
                &format!("tdmq_backup_ingester_segments_stored_total{l}")
            )?,
            objects,
            "{rule}\n{ingester}"
        );
        // Every produced message was received at least once; redeliveries are left out.
        let consumed = http::sample(
            ingester,
            &format!("tdmq_backup_ingester_consumed_bytes_total{l}"),
        )?;
        let payload = run.payload_bytes[rule] as f64;
        assert!(
            consumed >= payload && consumed > 0.0,
            "{rule}: consumed {consumed} < produced {payload}"
        );
        for series in [
            format!("tdmq_backup_uploader_last_stored_timestamp_seconds{l}"),
            format!("tdmq_backup_ingester_last_stored_timestamp_seconds{l}"),
        ] {
            let body = if series.contains("uploader") {
                uploader
            } else {
                ingester
            };
            let at = http::sample(body, &series)?;
            assert!(
                at >= run.started - 1.0 && at <= run.finished + 1.0,
                "{series} = {at}, not within the run ({} .. {})",
                run.started,
                run.finished
            );
        }
    }
    for (body, daemon) in [(ingester, "ingester"), (uploader, "uploader")] {
        let build = format!(
            "tdmq_backup_build_info{{version=\"{}\",daemon=\"{daemon}\"}}",
            proto::VERSION
        );
        assert_eq!(http::sample(body, &build)?, 1.0, "{body}");
        assert!(http::sample(body, "process_resident_memory_bytes")? > 0.0);
        assert!(http::sample(body, "process_open_fds")? > 0.0);
        assert!(http::sample(body, "process_max_fds")? >= http::sample(body, "process_open_fds")?);
        assert!(http::sample(body, "process_threads")? >= 1.0);
        let started = http::sample(body, "process_start_time_seconds")?;
        assert!(
            started <= run.started + 1.0 && started > run.started - 600.0,
            "{daemon} started at {started}, the run at {}",
            run.started
        );
        http::sample(body, "process_cpu_seconds_total")?;
    }

    // The deleted rule is gone from both; the other one is still there.
    let kept = format!("rule=\"{KEPT}\"");
    for body in [&run.ingester_after_delete, &run.uploader_after_delete] {
        assert!(!body.contains(&format!("rule=\"{DELETED}\"")), "{body}");
        assert!(body.contains(&kept), "{body}");
    }
    Ok(())
}

/// The rows of the user guide's metrics table: the metric each names (its first cell).
fn documented_metrics() -> anyhow::Result<BTreeSet<String>> {
    let path = repo_root().join("docs/user-guide.md");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let header = "| metric | type | labels | meaning |";
    let table = text
        .split_once(header)
        .with_context(|| format!("no `{header}` table in {}", path.display()))?
        .1;
    let mut names = BTreeSet::new();
    for row in table.lines().skip(2).take_while(|l| l.starts_with('|')) {
        let first = row.split('|').nth(1).unwrap_or_default().trim();
        let name = first
            .strip_prefix('`')
            .and_then(|f| f.strip_suffix('`'))
            .with_context(|| format!("a metrics table row without one `name` first: {row}"))?;
        names.insert(name.to_string());
    }
    Ok(names)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_user_guide_lists_every_metric_both_daemons_expose_and_no_other() -> anyhow::Result<()>
{
    let run = run().await?;
    let documented = documented_metrics()?;
    let mut exposed = families(&run.ingester);
    exposed.extend(families(&run.uploader));
    let missing: Vec<_> = exposed
        .keys()
        .filter(|name| name.starts_with("tdmq_backup_") || name.starts_with("process_"))
        .filter(|name| !documented.contains(*name))
        .collect();
    assert!(
        missing.is_empty(),
        "exposed but not in docs/user-guide.md's metrics table: {missing:?}"
    );
    let sometimes: BTreeSet<&str> = ONLY_SOMETIMES.iter().map(|(n, _)| *n).collect();
    let stale: Vec<_> = documented
        .iter()
        .filter(|name| !exposed.contains_key(*name) && !sometimes.contains(name.as_str()))
        .collect();
    assert!(
        stale.is_empty(),
        "in docs/user-guide.md's metrics table but exposed by neither daemon: {stale:?}"
    );
    for name in sometimes {
        assert!(documented.contains(name), "{name} is not documented");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_alert_rules_and_the_dashboard_use_is_exposed() -> anyhow::Result<()> {
    let run = run().await?;
    let mut exposed = sample_names(&run.ingester);
    exposed.extend(sample_names(&run.uploader));
    let root = repo_root();
    let mut checked = 0;
    for file in [
        "deploy/prometheus/tdmq-backup-alerts.yml",
        "deploy/prometheus/tdmq-backup-alerts.test.yml",
        "deploy/grafana/tdmq-backup-dashboard.json",
    ] {
        let text =
            std::fs::read_to_string(root.join(file)).with_context(|| format!("reading {file}"))?;
        let used = metric_names_in(&text);
        assert!(used.len() >= 5, "{file} names only {used:?}");
        let unknown: Vec<_> = used.iter().filter(|n| !exposed.contains(*n)).collect();
        assert!(
            unknown.is_empty(),
            "{file} uses metrics neither daemon exposes: {unknown:?}"
        );
        checked += used.len();
    }
    println!("{checked} metric names in the deploy files, all exposed");
    Ok(())
}

#[test]
fn names_are_read_from_scrapes_and_texts_as_queries_use_them() {
    let body = "# TYPE a_b counter\na_b_total{rule=\"x\"} 1\n# TYPE c info\nc_info{v=\"1\"} 1\n\
                # TYPE d histogram\nd_bucket{le=\"1\"} 0\nd_count 0\n# TYPE e gauge\ne 2\n# EOF\n";
    assert_eq!(
        families(body).keys().collect::<Vec<_>>(),
        ["a_b_total", "c_info", "d", "e"]
    );
    assert_eq!(
        sample_names(body).into_iter().collect::<Vec<_>>(),
        ["a_b_total", "c_info", "d_bucket", "d_count", "e"]
    );
    assert_eq!(
        metric_names_in(
            "rate(tdmq_backup_x_total{rule=~\"$rule\"}[5m]) * process_threads tdmq-backup"
        )
        .into_iter()
        .collect::<Vec<_>>(),
        ["process_threads", "tdmq_backup_x_total"]
    );
}
