//! `--format parquet` through the real pipeline: the objects in the bucket read by DuckDB (a
//! reader that shares no code with tdmq-backup) with the typed columns the reference promises,
//! every message exactly once with every field, time statistics an engine can skip row groups
//! by, and `verify --deep` and `restore` reading the same objects back.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use anyhow::Context as _;
use base64::Engine as _;
use harness::oracle::{backup_keys, format_time_ms, object_bytes, BackupObject};
use harness::{check_exactly_once, produce, sample_messages};
use serde_json::{json, Value};

use crate::restore::restore_rule_and_check;
use crate::util::{refused_rule_create, unique_topic, Extra, Stack, BUCKET};

/// Reads every Parquet file under the directory `argv[1]` with DuckDB and prints, as JSON, the
/// column types, every row (file, position, typed values as plain JSON), and per row group
/// whether `publish_time` has min/max statistics.
const DUCKDB_READER: &str = r#"
import json, sys
import duckdb
con = duckdb.connect()
files = sys.argv[1].rstrip("/") + "/**/*.parquet"
src = f"read_parquet('{files}', filename=true, file_row_number=true)"
types = {r[0]: r[1] for r in con.execute(f"DESCRIBE SELECT * FROM {src}").fetchall()}
rows = con.execute(f"""
    SELECT filename, file_row_number, message_id, topic, epoch_ms(publish_time),
           epoch_ms(event_time), key, key_encoding, hex(ordering_key),
           map_entries(properties), producer_name, sequence_id, hex(payload)
    FROM {src} ORDER BY filename, file_row_number""").fetchall()
stats = con.execute(f"""
    SELECT count(*), count(stats_min_value), count(stats_max_value)
    FROM parquet_metadata('{files}') WHERE path_in_schema = 'publish_time'""").fetchone()
print(json.dumps({"types": types, "rows": rows, "publish_time_stats": stats}))
"#;

/// A DuckDB row as the record the JSON Lines format would have held for the same message, so
/// the harness's exactly-once oracle checks every field.
fn record_of(row: &[Value]) -> anyhow::Result<Value> {
    let text = |i: usize| row.get(i).and_then(Value::as_str).map(str::to_string);
    let millis = |i: usize| row.get(i).and_then(Value::as_u64);
    let hex = |i: usize| -> anyhow::Result<Option<Vec<u8>>> {
        text(i)
            .map(|h| {
                (0..h.len())
                    .step_by(2)
                    .map(|at| u8::from_str_radix(&h[at..at + 2], 16).context("hex"))
                    .collect()
            })
            .transpose()
    };
    let payload = hex(12)?.context("a payload")?;
    let (payload, encoding) = match String::from_utf8(payload) {
        Ok(text) => (text, "utf8"),
        Err(e) => (
            base64::engine::general_purpose::STANDARD.encode(e.into_bytes()),
            "base64",
        ),
    };
    let properties: BTreeMap<String, String> = row
        .get(9)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|e| Some((e["key"].as_str()?.into(), e["value"].as_str()?.into())))
        .collect();
    let mut record = json!({
        "message_id": text(2),
        "topic": text(3),
        "publish_time": millis(4).and_then(format_time_ms),
        "event_time": millis(5).and_then(format_time_ms),
        "key": text(6),
        "properties": properties,
        "producer_name": text(10),
        "sequence_id": row.get(11),
        "payload": payload,
        "payload_encoding": encoding,
    });
    if let Some(encoding) = text(7) {
        record["key_encoding"] = Value::from(encoding);
    }
    if let Some(ordering_key) = hex(8)? {
        record["ordering_key"] =
            Value::from(base64::engine::general_purpose::STANDARD.encode(ordering_key));
    }
    Ok(record)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parquet_objects_are_read_by_duckdb_with_typed_columns_and_verify_and_restore_read_them(
) -> anyhow::Result<()> {
    let mut stack = Stack::services().await?;
    // As under a read-only root filesystem (deploy/kubernetes): the system's temporary directory
    // is unusable, so `verify --deep` must stage Parquet objects in the uploader's state_dir.
    stack.uploader_extra = Extra {
        args: Vec::new(),
        env: vec![(
            "TMPDIR".into(),
            stack.path("no-such-tmp").to_string_lossy().into_owned(),
        )],
    };
    stack.start_ingester().await?;
    stack.start_uploader().await?;
    let topic = unique_topic("pq");
    let full_topic = format!("persistent://public/default/{topic}");
    let messages = sample_messages(2_000, 37);
    produce(&stack.pulsar.url(), &full_topic, &messages, true).await?;

    // An unknown format is refused, naming the field and the choices.
    let err = refused_rule_create(&stack, "pq", &topic, &["--format", "csv"]);
    assert!(
        err.contains("format \"csv\" must be jsonl or parquet"),
        "{err}"
    );

    let rule = stack.create_rule(
        "pq",
        &topic,
        &[
            "--prefix",
            "pq/",
            "--window",
            "1h",
            "--max-messages",
            "400",
            "--format",
            "parquet",
            "--layout",
            "hive",
        ],
    )?;
    assert_eq!(
        (&rule["format"], &rule["compression"]),
        (&Value::from("parquet"), &Value::from("zstd")),
        "Parquet pages are zstd unless the rule says otherwise: {rule}"
    );
    stack
        .wait_until_backed_up("pq", messages.len() as u64, Duration::from_secs(180))
        .await?;

    // Every object is a .parquet file in hive folders, typed as Parquet for HTTP clients.
    let client = stack.s3.client();
    let keys: Vec<String> = backup_keys(&client, BUCKET, "pq/").await?;
    assert!(keys.len() >= 5, "{keys:?}");
    let local = stack.path("synced");
    let mut sizes: HashMap<String, (u64, String)> = HashMap::new();
    for key in &keys {
        assert!(key.ends_with(".parquet"), "{key}");
        assert!(key.contains("/dt=") && key.contains("/hour="), "{key}");
        let object = client.get_object().bucket(BUCKET).key(key).send().await?;
        assert_eq!(
            object.content_type(),
            Some("application/vnd.apache.parquet"),
            "{key}"
        );
        let body = object.body.collect().await?.into_bytes();
        assert_eq!(&body[..4], b"PAR1", "{key}");
        let path = local.join(key);
        std::fs::create_dir_all(path.parent().context("a folder")?)?;
        std::fs::write(&path, &body)?;
        sizes.insert(
            path.to_string_lossy().into_owned(),
            (body.len() as u64, format!("{:08x}", crc32c::crc32c(&body))),
        );
    }

    // DuckDB reads the very bytes in the bucket.
    let printed = harness::python::run_script(DUCKDB_READER, &[&local.to_string_lossy()]).await?;
    let read: Value = serde_json::from_str(&printed)?;
    let types = &read["types"];
    for (column, want) in [
        ("publish_time", "TIMESTAMP WITH TIME ZONE"),
        ("event_time", "TIMESTAMP WITH TIME ZONE"),
        ("payload", "BLOB"),
        ("ordering_key", "BLOB"),
        ("properties", "MAP(VARCHAR, VARCHAR)"),
        ("message_id", "VARCHAR"),
        ("key", "VARCHAR"),
        ("sequence_id", "BIGINT"),
    ] {
        assert_eq!(types[column], want, "{column}: {types}");
    }
    let stats = &read["publish_time_stats"];
    let groups = stats[0].as_u64().unwrap_or(0);
    assert!(groups >= keys.len() as u64, "{stats}");
    assert_eq!(
        (&stats[1], &stats[2]),
        (&Value::from(groups), &Value::from(groups)),
        "every row group has publish_time min/max, so engines can skip by time: {stats}"
    );
    let mut objects: BTreeMap<String, BackupObject> = BTreeMap::new();
    for row in read["rows"].as_array().context("rows")? {
        let row = row.as_array().context("a row")?;
        let file = row[0].as_str().context("a file name")?.to_string();
        let (content_length, content_crc32c) = sizes.get(&file).cloned().unwrap_or_default();
        let object = objects.entry(file.clone()).or_insert_with(|| BackupObject {
            key: file,
            metadata: HashMap::new(),
            records: Vec::new(),
            content_length,
            content_crc32c,
            record_bytes: 0,
        });
        object.records.push(record_of(row)?);
    }
    let objects: Vec<BackupObject> = objects.into_values().collect();
    assert_eq!(objects.len(), keys.len());
    let report = check_exactly_once(&objects, &messages)?;
    assert!(report.max_records_per_object <= 400, "{report:?}");
    // Each object's metadata describes it as for JSON Lines: rule, count, first and last id, and
    // the CRC32C of the bytes as stored.
    for object in harness::read_all(&client, BUCKET, "pq/").await? {
        let md = &object.metadata;
        let id = |i: usize| object.records[i]["message_id"].as_str().map(str::to_string);
        assert_eq!(md.get("rule").map(String::as_str), Some("pq"), "{md:?}");
        assert_eq!(
            md.get("message-count"),
            Some(&object.records.len().to_string()),
            "{md:?}"
        );
        assert_eq!(md.get("first-message-id").cloned(), id(0), "{md:?}");
        assert_eq!(
            md.get("last-message-id").cloned(),
            id(object.records.len() - 1),
            "{md:?}"
        );
        assert_eq!(
            md.get("content-crc32c"),
            Some(&object.content_crc32c),
            "{md:?}"
        );
    }

    // verify, light and deep, reads Parquet objects from the manifest as it does JSON Lines.
    for args in [vec!["verify", "pq"], vec!["verify", "pq", "--deep"]] {
        let v = stack.ctl_json(&args)?;
        assert_eq!(v["messages"], messages.len() as u64, "{args:?}: {v}");
        assert_eq!(v["problems"], Value::Array(vec![]), "{args:?}: {v}");
    }

    // Restore replays them, every field and the order kept.
    restore_rule_and_check(&stack, "pqb", "pq", &messages).await?;

    // A damaged object is named by verify --deep: not Parquet any more.
    let victim = &keys[keys.len() / 2];
    let mut damaged = object_bytes(&client, BUCKET, victim).await?;
    let tail = damaged.len() - 6;
    damaged[tail] ^= 0xff; // inside the footer's length
    client
        .put_object()
        .bucket(BUCKET)
        .key(victim)
        .body(damaged.into())
        .send()
        .await?;
    let out = stack.ctl(&["--output", "json", "verify", "pq", "--deep"]);
    assert_eq!(out.status.code(), Some(3));
    let v: Value = serde_json::from_slice(&out.stdout)?;
    let named: Vec<&Value> = v["problems"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["key"] == victim.as_str() && p["kind"] == "corrupt")
        .collect();
    assert!(!named.is_empty(), "{v}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_switched_from_json_lines_to_parquet_verifies_deep_and_restores_both(
) -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let topic = unique_topic("jp");
    let full_topic = format!("persistent://public/default/{topic}");
    let sent = sample_messages(2_000, 41);
    let (first, second) = sent.split_at(1_000);
    produce(&stack.pulsar.url(), &full_topic, first, true).await?;
    stack.create_rule("jp", &topic, &["--window", "1h", "--max-messages", "400"])?;
    stack
        .wait_until_backed_up("jp", first.len() as u64, Duration::from_secs(180))
        .await?;
    // A new format without a compression takes the format's own: zstd pages.
    stack.ctl_json(&["rule", "edit", "jp", "--format", "parquet"])?;
    let shown = stack.ctl_json(&["rule", "show", "jp"])?;
    assert_eq!(
        (&shown["format"], &shown["compression"]),
        (&Value::from("parquet"), &Value::from("zstd")),
        "{shown}"
    );
    produce(&stack.pulsar.url(), &full_topic, second, true).await?;
    stack
        .wait_until_backed_up("jp", sent.len() as u64, Duration::from_secs(180))
        .await?;

    let client = stack.s3.client();
    let keys: Vec<String> = backup_keys(&client, BUCKET, "").await?;
    let gz = keys.iter().filter(|k| k.ends_with(".jsonl.gz")).count();
    let parquet = keys.iter().filter(|k| k.ends_with(".parquet")).count();
    assert!(gz >= 3 && parquet >= 3, "{keys:?}");
    assert_eq!(gz + parquet, keys.len(), "{keys:?}");

    let v = stack.ctl_json(&["verify", "jp", "--deep"])?;
    assert_eq!(v["messages"], sent.len() as u64, "{v}");
    assert_eq!(v["problems"], Value::Array(vec![]), "{v}");
    // Both kinds replayed in one job, in the order they were consumed.
    restore_rule_and_check(&stack, "jpb", "jp", &sent).await
}
