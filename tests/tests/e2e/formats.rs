//! The rule options for analysts (`--compression gzip|zstd|none`, `--compression-level`,
//! `--layout plain|hive`) through the real pipeline: the objects' keys and bytes as a reader
//! outside tdmq-backup sees them (python-zstandard for zstd), and `verify` and `restore` reading
//! them back.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::Context as _;
use aws_sdk_s3::primitives::ByteStream;
use harness::{check_exactly_once, produce, read_all, sample_messages};
use serde_json::Value;

use crate::restore::restore_rule_and_check;
use crate::util::{refused_rule_create, unique_topic, Stack, BUCKET};

/// Reads every `.jsonl.zst` file in the directory `argv[1]` with python-zstandard (streaming:
/// the ingester's frames do not record their size up front) and prints, as JSON, each file's
/// frame parameters and the message ids of its records.
const PYTHON_READER: &str = r#"
import json, os, sys
import zstandard
out = {}
for name in sorted(os.listdir(sys.argv[1])):
    data = open(os.path.join(sys.argv[1], name), "rb").read()
    params = zstandard.get_frame_parameters(data)
    with zstandard.ZstdDecompressor().stream_reader(data, read_across_frames=True) as r:
        text = r.read().decode("utf-8")
    assert text.endswith("\n"), name
    ids = [json.loads(line)["message_id"] for line in text.splitlines()]
    out[name] = {"has_checksum": bool(params.has_checksum), "ids": ids}
print(json.dumps(out))
"#;

/// The user guide's hive-layout DuckDB query: the ```sql block whose first line is this.
const GUIDE_HIVE_TITLE: &str = "-- duckdb (hive layout):";
/// The documented topic folder and day, replaced by the local copy's and the objects' day.
const DOC_TOPIC_URL: &str = "s3://backup-1250000000/pulsar/pulsar-xxxxxxxx/prod/orders/";
const DOC_DAY: &str = "DATE '2026-11-24'";

/// Runs the SQL in `argv[1]` in DuckDB and prints its rows as JSON (dates as ISO text).
const DUCKDB_RUNNER: &str = r#"
import json, sys
import duckdb
con = duckdb.connect()
rows = con.execute(sys.argv[1]).fetchall()
print(json.dumps([[v.isoformat() if hasattr(v, "isoformat") else v for v in r] for r in rows]))
"#;

fn guide_hive_query() -> anyhow::Result<String> {
    let guide = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/user-guide.md");
    let text = std::fs::read_to_string(&guide)?;
    let start = text
        .find(&format!("```sql\n{GUIDE_HIVE_TITLE}"))
        .context("the user guide has no hive-layout DuckDB query")?
        + "```sql\n".len();
    let len = text[start..]
        .find("```")
        .context("unterminated sql block")?;
    Ok(text[start..start + len].to_string())
}

async fn ctl_exit_json(stack: &Stack, args: &[&str]) -> anyhow::Result<(i32, Value)> {
    let mut full = vec!["--output", "json"];
    full.extend_from_slice(args);
    let out = tokio::process::Command::new(stack.bin("tdmq-backup"))
        .args(stack.ctl_args(&full))
        .stdin(std::process::Stdio::null())
        .output()
        .await?;
    let json = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "{args:?} printed no JSON: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    Ok((out.status.code().unwrap_or(-1), json))
}

/// `dt=YYYY-MM-DD/hour=HH/{name}` whose date is the window start the name carries
/// (`{rule}-YYYYMMDDTHHMMSSZ-…`).
fn assert_hive_key(rest: &str, rule: &str, extension: &str) {
    let parts: Vec<&str> = rest.split('/').collect();
    assert_eq!(parts.len(), 3, "{rest}");
    let (dt, hour, name) = (parts[0], parts[1], parts[2]);
    let stamp = name
        .strip_prefix(&format!("{rule}-"))
        .and_then(|n| n.get(..16))
        .unwrap_or_else(|| panic!("{rest}: no window start in the name"));
    let start = chrono::NaiveDateTime::parse_from_str(stamp, "%Y%m%dT%H%M%SZ")
        .unwrap_or_else(|e| panic!("{rest}: {e}"));
    assert_eq!(dt, start.format("dt=%Y-%m-%d").to_string(), "{rest}");
    assert_eq!(hour, start.format("hour=%H").to_string(), "{rest}");
    assert!(name.ends_with(extension), "{rest}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zstd_hive_objects_are_read_by_python_zstandard_and_verify_passes() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let topic = unique_topic("zh");
    let full_topic = format!("persistent://public/default/{topic}");
    let messages = sample_messages(1_500, 23);
    produce(&stack.pulsar.url(), &full_topic, &messages, true).await?;

    // Refused whole, naming the field, before anything is created.
    let err = refused_rule_create(
        &stack,
        "zh",
        &topic,
        &["--compression", "zstd", "--compression-level", "22"],
    );
    assert!(
        err.contains("compression_level 22 must be between 1 and 19 for zstd"),
        "{err}"
    );

    let rule = stack.create_rule(
        "zh",
        &topic,
        &[
            "--prefix",
            "e2e/",
            "--window",
            "1h",
            "--max-messages",
            "300",
            "--compression",
            "zstd",
            "--compression-level",
            "6",
            "--layout",
            "hive",
        ],
    )?;
    assert_eq!(
        (
            &rule["compression"],
            &rule["compression_level"],
            &rule["layout"]
        ),
        (&Value::from("zstd"), &Value::from(6), &Value::from("hive")),
        "{rule}"
    );
    stack
        .wait_until_backed_up("zh", messages.len() as u64, Duration::from_secs(180))
        .await?;

    let client = stack.s3.client();
    let objects = read_all(&client, BUCKET, "e2e/").await?;
    let report = check_exactly_once(&objects, &messages)?;
    assert!(report.objects >= 5, "{report:?}");
    let folder = format!("e2e/public/default/{topic}/");
    for o in &objects {
        let rest = o
            .key
            .strip_prefix(&folder)
            .unwrap_or_else(|| panic!("{} outside {folder}", o.key));
        assert_hive_key(rest, "zh", ".jsonl.zst");
    }
    let head = client
        .head_object()
        .bucket(BUCKET)
        .key(&objects[0].key)
        .send()
        .await?;
    assert_eq!(head.content_type(), Some("application/zstd"));

    // python-zstandard reads the very bytes in the bucket: the same records, frames checksummed.
    // Each object twice: numbered in one folder for the zstandard reader, and under its key (as
    // `aws s3 sync` leaves them) for the user guide's DuckDB query below.
    let dir = stack.path("zst-objects");
    std::fs::create_dir_all(&dir)?;
    let local = stack.path("synced");
    let mut want: BTreeSet<String> = BTreeSet::new();
    for (i, o) in objects.iter().enumerate() {
        let body = harness::oracle::object_bytes(&client, BUCKET, &o.key).await?;
        std::fs::write(dir.join(format!("{i:04}.jsonl.zst")), &body)?;
        let path = local.join(&o.key);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, &body)?;
        for r in &o.records {
            want.insert(r["message_id"].as_str().unwrap_or_default().to_string());
        }
    }
    let printed = harness::python::run_script(PYTHON_READER, &[&dir.to_string_lossy()]).await?;
    let read: Value = serde_json::from_str(&printed)?;
    let files = read.as_object().context("an object per file")?;
    assert_eq!(files.len(), objects.len());
    let mut got: BTreeSet<String> = BTreeSet::new();
    for (name, file) in files {
        assert_eq!(file["has_checksum"], true, "{name}");
        for id in file["ids"].as_array().into_iter().flatten() {
            got.insert(id.as_str().unwrap_or_default().to_string());
        }
    }
    assert_eq!(got.len(), messages.len());
    assert_eq!(got, want);

    // The user guide's DuckDB query over hive folders, run as printed on the synced copy.
    let dates: BTreeSet<(String, String)> = objects
        .iter()
        .filter_map(|o| {
            let rest = o.key.strip_prefix(&folder)?;
            let mut parts = rest.split('/');
            let dt = parts.next()?.strip_prefix("dt=")?.to_string();
            let hour = parts.next()?.strip_prefix("hour=")?.to_string();
            Some((dt, hour))
        })
        .collect();
    let (day, _) = dates.iter().next().context("a date")?.clone();
    let query = guide_hive_query()?
        .replace(
            DOC_TOPIC_URL,
            &format!(
                "{}/",
                local.join(&folder).to_string_lossy().trim_end_matches('/')
            ),
        )
        .replace(DOC_DAY, &format!("DATE '{day}'"));
    let printed = harness::python::run_script(DUCKDB_RUNNER, &[&query]).await?;
    let rows: Vec<(String, u32, u64, u64)> = serde_json::from_str(&printed)?;
    let want_rows: Vec<(String, u32)> = dates
        .iter()
        .filter(|(dt, _)| *dt == day)
        .map(|(dt, hour)| (dt.clone(), hour.parse().unwrap_or(u32::MAX)))
        .collect();
    assert_eq!(
        rows.iter()
            .map(|(dt, hour, _, _)| (dt.clone(), *hour))
            .collect::<Vec<_>>(),
        want_rows
    );
    let on_day: u64 = objects
        .iter()
        .filter(|o| o.key.contains(&format!("/dt={day}/")))
        .map(|o| o.records.len() as u64)
        .sum();
    assert_eq!(rows.iter().map(|r| r.2).sum::<u64>(), on_day);
    assert_eq!(rows.iter().map(|r| r.3).sum::<u64>(), on_day);

    // verify, light and deep, reads the hive keys from the manifest and the zstd bytes.
    for args in [vec!["verify", "zh"], vec!["verify", "zh", "--deep"]] {
        let (code, v) = ctl_exit_json(&stack, &args).await?;
        assert_eq!(code, 0, "{args:?}: {v}");
        assert_eq!(v["messages"], messages.len() as u64, "{v}");
        assert_eq!(v["problems"], Value::Array(vec![]), "{v}");
    }
    // An object in a hive folder the rule did not write is unexpected; one damaged is corrupt.
    let stray = format!("{folder}dt=2026-01-01/hour=00/copied-by-hand.jsonl.zst");
    client
        .put_object()
        .bucket(BUCKET)
        .key(&stray)
        .body(ByteStream::from(b"not zstd".to_vec()))
        .send()
        .await?;
    let (code, v) = ctl_exit_json(&stack, &["verify", "zh"]).await?;
    assert_eq!(code, 3, "{v}");
    let kinds: Vec<(String, String)> = v["problems"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            (
                p["kind"].as_str().unwrap_or_default().to_string(),
                p["key"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    assert_eq!(kinds, vec![("unexpected".to_string(), stray)], "{v}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_switched_from_gzip_to_zstd_verifies_deep_and_restores_both() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let topic = unique_topic("sw");
    let full_topic = format!("persistent://public/default/{topic}");
    let sent = sample_messages(2_000, 29);
    let (first, second) = sent.split_at(1_000);
    produce(&stack.pulsar.url(), &full_topic, first, true).await?;
    stack.create_rule("sw", &topic, &["--window", "1h", "--max-messages", "400"])?;
    stack
        .wait_until_backed_up("sw", first.len() as u64, Duration::from_secs(180))
        .await?;
    let edited = stack.ctl_json(&["rule", "edit", "sw", "--compression", "zstd"])?;
    let shown = stack.ctl_json(&["rule", "show", "sw"])?;
    assert_eq!(
        (&shown["compression"], &shown["compression_level"]),
        (&Value::from("zstd"), &Value::from(1)),
        "{edited}\n{shown}"
    );
    produce(&stack.pulsar.url(), &full_topic, second, true).await?;
    stack
        .wait_until_backed_up("sw", sent.len() as u64, Duration::from_secs(180))
        .await?;

    let client = stack.s3.client();
    let objects = read_all(&client, BUCKET, "").await?;
    check_exactly_once(&objects, &sent)?;
    let gz = objects
        .iter()
        .filter(|o| o.key.ends_with(".jsonl.gz"))
        .count();
    let zst = objects
        .iter()
        .filter(|o| o.key.ends_with(".jsonl.zst"))
        .count();
    assert!(gz >= 3 && zst >= 3, "{gz} gzip and {zst} zstd objects");
    // Plain layout: the date as YYYY/MM/DD/HH.
    for o in &objects {
        let parts: Vec<&str> = o.key.split('/').collect();
        assert_eq!(parts.len(), 8, "{}", o.key);
        assert!(
            parts[3].len() == 4 && parts[3].parse::<u32>().is_ok(),
            "{}",
            o.key
        );
    }

    let (code, v) = ctl_exit_json(&stack, &["verify", "sw", "--deep"]).await?;
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["problems"], Value::Array(vec![]), "{v}");

    restore_rule_and_check(&stack, "swb", "sw", &sent).await
}
