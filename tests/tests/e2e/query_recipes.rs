//! The user guide's "Query your backup" DuckDB recipes, run as printed against objects the
//! pipeline wrote (copied out of the S3 server the way an analyst would sync them), and their
//! answers checked against what was produced: the docs cannot rot without this failing.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, ensure, Context as _};
use base64::Engine as _;
use harness::{produce, sample_messages, SampleMessage};
use serde_json::Value;

use crate::util::{unique_topic, Stack, BUCKET};

const CHAPTER: &str = "## 10. Query your backup";
/// The documented path of the topic's objects, replaced by the local copy's.
const DOC_TOPIC_URL: &str = "s3://backup-1250000000/pulsar/pulsar-xxxxxxxx/prod/orders/";
const DOC_FROM: &str = "2026-11-24 02:10:00+00";
const DOC_TO: &str = "2026-11-24 02:20:00+00";

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Copies every object under `prefix` to `dir`, keeping the keys as paths.
async fn sync_objects(stack: &Stack, prefix: &str, dir: &Path) -> anyhow::Result<usize> {
    let client = stack.s3.client();
    let mut copied = 0;
    for (key, _) in harness::oracle::list_objects(&client, BUCKET, prefix).await? {
        let bytes = harness::oracle::object_bytes(&client, BUCKET, &key).await?;
        let path = dir.join(&key);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, &bytes)?;
        copied += 1;
    }
    Ok(copied)
}

/// Runs the chapter's recipes; returns each recipe's statement results by title.
async fn run_recipes(
    replacements: &[(String, String)],
    workdir: &Path,
) -> anyhow::Result<HashMap<String, Vec<Value>>> {
    let root = workspace_root();
    let python = root.join(".venv/bin/python");
    let mut command = tokio::process::Command::new(&python);
    command
        .arg(root.join("tests/recipes/duckdb_recipes.py"))
        .arg(root.join("docs/user-guide.md"))
        .args(["--chapter", CHAPTER])
        .arg("--workdir")
        .arg(workdir);
    for (from, to) in replacements {
        command.arg("--replace").arg(format!("{from}={to}"));
    }
    let out = command.output().await.with_context(|| {
        format!(
            "running {} (scripts/setup-test-services.sh installs DuckDB into .venv)",
            python.display()
        )
    })?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.success(),
        "the recipes failed (exit {:?}; is DuckDB installed? scripts/setup-test-services.sh \
         installs it): {stderr}",
        out.status.code()
    );
    let json: Value = serde_json::from_slice(&out.stdout).context("recipe output is not JSON")?;
    let mut by_title = HashMap::new();
    for recipe in json["recipes"]
        .as_array()
        .context("no recipes in the output")?
    {
        let title = recipe["title"].as_str().context("recipe without title")?;
        let results = recipe["results"].as_array().cloned().unwrap_or_default();
        by_title.insert(title.to_string(), results);
    }
    Ok(by_title)
}

/// Statement `n`'s rows of the recipe titled `title`.
fn rows<'a>(
    recipes: &'a HashMap<String, Vec<Value>>,
    title: &str,
    n: usize,
) -> anyhow::Result<&'a Vec<Value>> {
    let Some(results) = recipes.get(title) else {
        bail!(
            "the user guide has no recipe `-- duckdb: {title}` (recipes: {:?})",
            recipes.keys()
        )
    };
    results
        .get(n)
        .and_then(Value::as_array)
        .with_context(|| format!("recipe {title:?} statement {n} returned no rows: {results:?}"))
}

fn key_bytes(m: &SampleMessage) -> Option<Vec<u8>> {
    let key = m.key.as_ref()?;
    if m.key_base64 {
        base64::engine::general_purpose::STANDARD.decode(key).ok()
    } else {
        Some(key.as_bytes().to_vec())
    }
}

fn hex_field(row: &Value, i: usize) -> anyhow::Result<Option<Vec<u8>>> {
    match &row[i] {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(
            hex::decode(s).with_context(|| format!("not hex: {s}"))?,
        )),
        other => bail!("expected hex bytes, got {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_user_guides_duckdb_recipes_answer_right_on_a_real_backup() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let topic = unique_topic("recipes");
    let full_topic = format!("persistent://public/default/{topic}");
    let mut messages = sample_messages(600, 31);
    for (i, m) in messages.iter_mut().enumerate() {
        if i % 4 == 1 {
            m.properties.insert("trace-id".into(), format!("t-{i}"));
        }
    }
    let (early, late) = messages.split_at(300);

    stack.create_rule(
        "recipes",
        &topic,
        &["--prefix", "pulsar/", "--window", "1h"],
    )?;
    // A second rule on its own subscription writes the same messages as Parquet into the same
    // folder, for the Parquet recipe.
    let mut parquet_rule = stack.create_rule_args(
        "recipes-pq",
        &topic,
        &[
            "--prefix", "pulsar/", "--window", "1h", "--format", "parquet",
        ],
    );
    let sub = parquet_rule
        .iter()
        .position(|a| a == "--subscription")
        .context("a --subscription argument")?;
    parquet_rule[sub + 1] = "tdmq-backup-parquet".into();
    stack.ctl_json(&parquet_rule.iter().map(String::as_str).collect::<Vec<_>>())?;
    produce(&stack.pulsar.url(), &full_topic, early, true).await?;
    // Every early message is published (its send confirmed) before `boundary`, every late one
    // after it: the broker stamps publish times on this machine's clock, in milliseconds.
    let boundary = chrono::Utc::now();
    let boundary_ms = boundary.timestamp_millis();
    while chrono::Utc::now().timestamp_millis() < boundary_ms + 2 {
        tokio::task::yield_now().await;
    }
    produce(&stack.pulsar.url(), &full_topic, late, true).await?;
    for rule in ["recipes", "recipes-pq"] {
        stack
            .wait_until_backed_up(rule, messages.len() as u64, Duration::from_secs(180))
            .await?;
    }

    let copy = tempfile::tempdir()?;
    let objects = sync_objects(&stack, "pulsar/", copy.path()).await?;
    ensure!(objects > 0, "nothing stored under pulsar/");
    let topic_dir = copy.path().join(format!("pulsar/public/default/{topic}/"));
    ensure!(
        topic_dir.is_dir(),
        "no {} after the copy",
        topic_dir.display()
    );
    // The range [boundary (exclusive, to the millisecond), far future).
    let from = chrono::DateTime::from_timestamp_millis(boundary_ms + 1)
        .context("boundary")?
        .format("%Y-%m-%d %H:%M:%S%.3f+00")
        .to_string();
    let workdir = tempfile::tempdir()?;
    let recipes = run_recipes(
        &[
            (
                DOC_TOPIC_URL.into(),
                topic_dir.to_string_lossy().into_owned(),
            ),
            (DOC_FROM.into(), from),
            (DOC_TO.into(), "2999-01-01 00:00:00+00".into()),
        ],
        workdir.path(),
    )
    .await?;

    // Counts: every message once; the hours add up.
    let counts = rows(&recipes, "how many messages, and how many per hour", 0)?;
    assert_eq!(counts, &vec![serde_json::json!([600, 600])], "count recipe");
    let per_hour = rows(&recipes, "how many messages, and how many per hour", 1)?;
    let hours_total: i64 = per_hour.iter().map(|r| r[1].as_i64().unwrap_or(0)).sum();
    assert_eq!(hours_total, 600, "per-hour recipe: {per_hour:?}");

    // The time range holds exactly the late messages, with their text payloads.
    let in_range = rows(&recipes, "the messages published in a time range", 0)?;
    let late_texts: BTreeSet<String> = late
        .iter()
        .filter_map(|m| String::from_utf8(m.payload.clone()).ok())
        .collect();
    let got_texts: BTreeSet<String> = in_range
        .iter()
        .filter_map(|r| r[4].as_str().map(str::to_string))
        .collect();
    assert_eq!(in_range.len(), late.len(), "time-range recipe row count");
    assert_eq!(got_texts, late_texts, "time-range recipe payloads");

    // Properties: how many messages carry each name, and the trace-id lookup.
    let mut expected_names: BTreeMap<String, i64> = BTreeMap::new();
    for m in &messages {
        for name in m.properties.keys() {
            *expected_names.entry(name.clone()).or_default() += 1;
        }
    }
    let names: BTreeMap<String, i64> = rows(&recipes, "properties as a map", 0)?
        .iter()
        .map(|r| {
            (
                r[0].as_str().unwrap_or("").to_string(),
                r[1].as_i64().unwrap_or(-1),
            )
        })
        .collect();
    assert_eq!(names, expected_names, "property-name recipe");
    let traces: BTreeSet<String> = rows(&recipes, "properties as a map", 1)?
        .iter()
        .filter_map(|r| r[1].as_str().map(str::to_string))
        .collect();
    let expected_traces: BTreeSet<String> = messages
        .iter()
        .filter_map(|m| m.properties.get("trace-id").cloned())
        .collect();
    assert_eq!(traces, expected_traces, "trace-id lookup recipe");

    // Binary payloads and byte keys decode to exactly the bytes produced.
    let by_payload: HashMap<&[u8], &SampleMessage> =
        messages.iter().map(|m| (m.payload.as_slice(), m)).collect();
    let binary = rows(&recipes, "binary payloads and keys, decoded", 0)?;
    let expected_binary = messages
        .iter()
        .filter(|m| String::from_utf8(m.payload.clone()).is_err() || m.key_base64)
        .count();
    assert_eq!(binary.len(), expected_binary, "binary recipe row count");
    ensure!(
        expected_binary > 20,
        "too few binary samples to prove anything"
    );
    for row in binary {
        let payload = hex_field(row, 2)?.context("payload_bytes is null")?;
        let Some(produced) = by_payload.get(payload.as_slice()) else {
            bail!("binary recipe returned a payload nobody produced: {row}");
        };
        assert_eq!(row[1].as_i64(), Some(payload.len() as i64), "{row}");
        assert_eq!(
            hex_field(row, 3)?,
            key_bytes(produced),
            "key bytes of {row}"
        );
    }

    // The Parquet copy holds them all.
    let parquet = rows(&recipes, "a Parquet copy for faster queries", 1)?;
    assert_eq!(
        parquet[0][0].as_i64(),
        Some(600),
        "parquet recipe: {parquet:?}"
    );
    ensure!(workdir.path().join("orders.parquet").is_file());

    // The Parquet rule's objects, read as they are: all of them once, and the time range holds
    // exactly the late messages' payloads, binary ones included, as raw bytes.
    let title = "Parquet objects, read as they are";
    assert_eq!(
        rows(&recipes, title, 0)?,
        &vec![serde_json::json!([600, 600])],
        "parquet count recipe"
    );
    let in_range = rows(&recipes, title, 1)?;
    let got: BTreeSet<Vec<u8>> = in_range
        .iter()
        .map(|r| hex_field(r, 3)?.context("payload is null"))
        .collect::<anyhow::Result<_>>()?;
    let want: BTreeSet<Vec<u8>> = late.iter().map(|m| m.payload.clone()).collect();
    assert_eq!(in_range.len(), late.len(), "parquet time-range row count");
    assert_eq!(got, want, "parquet time-range payloads");
    let traces: BTreeSet<String> = in_range
        .iter()
        .filter_map(|r| r[2].as_str().map(str::to_string))
        .collect();
    let late_traces: BTreeSet<String> = late
        .iter()
        .filter_map(|m| m.properties.get("trace-id").cloned())
        .collect();
    assert_eq!(traces, late_traces, "parquet properties map");
    Ok(())
}
