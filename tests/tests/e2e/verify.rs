//! `verify` against a real backup: the manifest the uploader writes, the Verify RPC and the CLI
//! (exit codes, JSON), on a complete backup and after damaging it in every way the contract
//! names.

use std::collections::BTreeSet;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;
use aws_sdk_s3::primitives::ByteStream;
use harness::{produce, sample_messages};
use serde_json::Value;

use crate::util::{unique_topic, Stack, BUCKET};

/// Runs `tdmq-backup -o json ARGS` without blocking the runtime (the S3 server runs on it);
/// returns the exit code and the JSON it printed.
async fn verify_json(stack: &Stack, args: &[&str]) -> anyhow::Result<(i32, Value, String)> {
    let mut full = vec!["--output", "json", "verify"];
    full.extend_from_slice(args);
    let out = tokio::process::Command::new(stack.bin("tdmq-backup"))
        .args(stack.ctl_args(&full))
        .stdin(Stdio::null())
        .output()
        .await?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let json = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "verify {args:?} printed no JSON (exit {:?}): {}{stderr}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout)
        )
    })?;
    Ok((out.status.code().unwrap_or(-1), json, stderr))
}

async fn list(client: &aws_sdk_s3::Client, prefix: &str) -> anyhow::Result<Vec<(String, i64)>> {
    harness::oracle::list_objects(client, BUCKET, prefix).await
}

async fn get(client: &aws_sdk_s3::Client, key: &str) -> anyhow::Result<Vec<u8>> {
    let out = client.get_object().bucket(BUCKET).key(key).send().await?;
    Ok(out.body.collect().await?.into_bytes().to_vec())
}

fn problems(v: &Value) -> BTreeSet<(String, String)> {
    v["problems"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .map(|p| {
                    (
                        p["kind"].as_str().unwrap_or_default().to_string(),
                        p["key"].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_passes_a_complete_backup_and_names_every_damage() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let topic = unique_topic("verify");
    let full_topic = format!("persistent://public/default/{topic}");
    let messages = sample_messages(2_000, 11);
    produce(&stack.pulsar.url(), &full_topic, &messages, true).await?;
    stack.create_rule(
        "vf",
        &topic,
        &[
            "--prefix",
            "e2e/",
            "--window",
            "1h",
            "--max-messages",
            "200",
        ],
    )?;
    stack
        .wait_until_backed_up("vf", messages.len() as u64, Duration::from_secs(180))
        .await?;
    let client = stack.s3.client();
    let folder = format!("e2e/public/default/{topic}/");
    let objects = list(&client, &folder).await?;
    assert!(objects.len() >= 10, "{objects:?}");

    // Every acknowledged object has its manifest entry, and it describes the object.
    let entries = list(&client, "e2e/.tdmq-backup/manifest/vf/").await?;
    assert_eq!(entries.len(), objects.len(), "{entries:?}");
    for (key, _) in &entries {
        let entry: Value = serde_json::from_slice(&get(&client, key).await?)?;
        let object = entry["key"].as_str().unwrap_or_default();
        assert!(
            objects
                .iter()
                .any(|(k, size)| k == object && entry["size"] == *size),
            "{entry}"
        );
        assert_eq!(entry["rule"], "vf");
        let partitions = entry["partitions"].as_array().cloned().unwrap_or_default();
        assert_eq!(partitions.len(), 1, "{entry}");
        assert_eq!(partitions[0]["messages"], entry["messages"], "{entry}");
    }

    // A complete backup: exit 0, with and without --deep.
    for deep in [false, true] {
        let args: Vec<&str> = if deep {
            vec!["vf", "--deep"]
        } else {
            vec!["vf"]
        };
        let (code, v, stderr) = verify_json(&stack, &args).await?;
        assert_eq!(code, 0, "{v}\n{stderr}");
        assert_eq!(v["rule"], "vf");
        assert_eq!(v["objects"], objects.len() as u64);
        assert_eq!(v["messages"], messages.len() as u64);
        assert_eq!(v["problems"], Value::Array(vec![]), "{v}");
        if deep {
            assert!(v["bytes_read"].as_u64().unwrap_or(0) > 0, "{v}");
        }
    }
    // A time range after every publish time selects nothing.
    let (code, v, _) = verify_json(&stack, &["vf", "--from", "2999-01-01T00:00:00Z"]).await?;
    assert_eq!((code, &v["objects"]), (0, &Value::from(0)), "{v}");

    // The last object by message id, whose copy becomes the gap below; the other damage is
    // done elsewhere (keys sort by text, so the one at a fixed index may be this one).
    let mut last_entry: Option<Value> = None;
    for (key, _) in &entries {
        let entry: Value = serde_json::from_slice(&get(&client, key).await?)?;
        let last = entry["partitions"][0]["last_message_id"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let newer = last_entry.as_ref().is_none_or(|e| {
            // Ledger, entry and batch index: two objects may end inside the same entry.
            let position = |id: &str| -> Vec<i64> {
                id.split(':')
                    .enumerate()
                    .filter(|(i, _)| *i != 2)
                    .filter_map(|(_, n)| n.parse().ok())
                    .collect()
            };
            let prev = position(
                e["partitions"][0]["last_message_id"]
                    .as_str()
                    .unwrap_or_default(),
            );
            position(&last) > prev
        });
        if newer {
            last_entry = Some(entry);
        }
    }
    let last_key = last_entry
        .as_ref()
        .and_then(|e| e["key"].as_str())
        .context("a last entry")?
        .to_string();
    let others: Vec<&String> = objects
        .iter()
        .map(|(k, _)| k)
        .filter(|k| **k != last_key)
        .collect();
    // Damage: one object deleted, one truncated, one stray object, one entry whose ids leave a gap.
    let deleted = others[1].clone();
    let truncated = others[3].clone();
    client
        .delete_object()
        .bucket(BUCKET)
        .key(&deleted)
        .send()
        .await?;
    let bytes = get(&client, &truncated).await?;
    client
        .put_object()
        .bucket(BUCKET)
        .key(&truncated)
        .body(ByteStream::from(bytes[..bytes.len() / 2].to_vec()))
        .send()
        .await?;
    let stray = format!("{folder}2026/01/01/00/copied-by-hand.jsonl.gz");
    client
        .put_object()
        .bucket(BUCKET)
        .key(&stray)
        .body(ByteStream::from(b"not a backup".to_vec()))
        .send()
        .await?;
    // The gap: a copy of the last object, recorded as if it held ids 10 entries past the end.
    let mut gap = last_entry.context("a last entry")?;
    let shift = |id: &str, by: u64| -> String {
        let mut parts: Vec<String> = id.split(':').map(str::to_string).collect();
        let entry: u64 = parts[1].parse().unwrap_or(0);
        parts[1] = (entry + by).to_string();
        parts.join(":")
    };
    let last_id = gap["partitions"][0]["last_message_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let first_id = gap["partitions"][0]["first_message_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let span: u64 = last_id
        .split(':')
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
        - first_id
            .split(':')
            .nth(1)
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0);
    let gap_first = shift(&last_id, 11);
    let gap_last = shift(&last_id, 11 + span);
    let source_key = gap["key"].as_str().unwrap_or_default().to_string();
    let gap_key = source_key.replace(".jsonl.gz", "-gap.jsonl.gz");
    let copy = get(&client, &source_key).await?;
    let put = client
        .put_object()
        .bucket(BUCKET)
        .key(&gap_key)
        // As the uploader writes it: a store whose listing shows no ETag (s3s-fs) is asked
        // with HEAD, and the checksum in the metadata must be the recorded one.
        .metadata("content-crc32c", gap["crc32c"].as_str().unwrap_or_default())
        .body(ByteStream::from(copy))
        .send()
        .await?;
    gap["key"] = Value::from(gap_key.clone());
    gap["etag"] = Value::from(put.e_tag().unwrap_or_default());
    gap["partitions"][0]["first_message_id"] = Value::from(gap_first);
    gap["partitions"][0]["last_message_id"] = Value::from(gap_last);
    let gap_name = gap_key.rsplit('/').next().unwrap_or_default();
    let entry_folder = entries[0]
        .0
        .rsplit_once('/')
        .map(|(f, _)| f)
        .unwrap_or_default();
    client
        .put_object()
        .bucket(BUCKET)
        .key(format!("{entry_folder}/{gap_name}.json"))
        .body(ByteStream::from(serde_json::to_vec(&gap)?))
        .send()
        .await?;

    let (code, v, stderr) = verify_json(&stack, &["vf"]).await?;
    assert_eq!(code, 3, "{v}\n{stderr}");
    assert!(stderr.contains("problem"), "{stderr}");
    let expected: BTreeSet<(String, String)> = [
        ("missing", deleted.as_str()),
        ("corrupt", truncated.as_str()),
        ("unexpected", stray.as_str()),
        ("gap", gap_key.as_str()),
    ]
    .into_iter()
    .map(|(k, key)| (k.to_string(), key.to_string()))
    .collect();
    assert_eq!(problems(&v), expected, "{v}");
    let gap_problem = v["problems"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["kind"] == "gap"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        gap_problem["first_id"],
        Value::from(last_id.as_str()),
        "{gap_problem}"
    );
    for p in v["problems"].as_array().into_iter().flatten() {
        assert!(!p["detail"].as_str().unwrap_or_default().is_empty(), "{p}");
    }

    // --deep finds the same, and reads the truncated object as damaged content too.
    let (code, v, stderr) = verify_json(&stack, &["vf", "--deep"]).await?;
    assert_eq!(code, 3, "{v}\n{stderr}");
    let found = problems(&v);
    for want in &expected {
        assert!(found.contains(want), "{want:?} in {v}");
    }
    // The copy's records are not the ids its forged entry claims.
    assert!(
        found.contains(&("corrupt".to_string(), gap_key.clone())),
        "{v}"
    );

    // The table names them too; an unknown rule is not found (exit 4).
    let out = stack.ctl(&["verify", "vf"]);
    assert_eq!(out.status.code(), Some(3));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("missing") && text.contains("unexpected"),
        "{text}"
    );
    let out = stack.ctl(&["verify", "no-such-rule"]);
    assert_eq!(
        out.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// kill -9 of the uploader after it stored an object and before it wrote the object's manifest
/// entry: that segment is not committed (so not acknowledged) at the crash; after the restart
/// the entry is written before the commit, and verify finds the backup complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_store_and_commit_leaves_no_acknowledged_object_without_its_entry(
) -> anyhow::Result<()> {
    let mut stack = Stack::start().await?;
    let topic = unique_topic("verify-crash");
    let full_topic = format!("persistent://public/default/{topic}");
    stack.create_rule(
        "vc",
        &topic,
        &["--prefix", "c/", "--window", "1h", "--max-messages", "100"],
    )?;
    stack.uploader_extra = crate::util::Extra::failpoint("uploader:after_put@2");
    if let Some(mut old) = stack.uploader.take() {
        old.kill9()?;
    }
    stack.start_uploader().await?;
    let messages = sample_messages(500, 5);
    produce(&stack.pulsar.url(), &full_topic, &messages, true).await?;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let uploader = stack.uploader.as_mut().context("the uploader runs")?;
        if uploader.try_status()?.is_some() {
            assert!(
                uploader
                    .log()
                    .contains("failpoint uploader:after_put reached"),
                "{}",
                uploader.log()
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the failpoint was never reached"
        );
        let _ = stack.ctl(&["rule", "flush", "vc"]);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // At the crash: every object without an entry belongs to a segment still waiting (sealed,
    // not committed, so nothing of it is acknowledged on Pulsar).
    let client = stack.s3.client();
    let objects = list(&client, &format!("c/public/default/{topic}/")).await?;
    let entries = list(&client, "c/.tdmq-backup/manifest/vc/").await?;
    let named: BTreeSet<String> = entries
        .iter()
        .filter_map(|(k, _)| {
            k.rsplit('/')
                .next()
                .map(|n| n.trim_end_matches(".json").to_string())
        })
        .collect();
    let without: Vec<&String> = objects
        .iter()
        .map(|(k, _)| k)
        .filter(|k| !named.contains(k.rsplit('/').next().unwrap_or_default()))
        .collect();
    assert!(
        !without.is_empty(),
        "the crash came after a PUT: {objects:?} {entries:?}"
    );
    let segments = stack.ctl_json_async(&["segments", "vc"]).await?;
    for key in &without {
        let segment = segments["segments"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["object_key"] == key.as_str()))
            .cloned()
            .unwrap_or_default();
        assert_eq!(segment["state"], "sealed", "{key}: {segments}");
    }

    stack.uploader_extra = crate::util::Extra::default();
    stack.uploader = None;
    stack.start_uploader().await?;
    stack
        .wait_until_backed_up("vc", messages.len() as u64, Duration::from_secs(120))
        .await?;
    let objects = list(&client, &format!("c/public/default/{topic}/")).await?;
    let entries = list(&client, "c/.tdmq-backup/manifest/vc/").await?;
    assert_eq!(entries.len(), objects.len(), "{objects:?} {entries:?}");
    let (code, v, stderr) = verify_json(&stack, &["vc", "--deep"]).await?;
    assert_eq!(code, 0, "{v}\n{stderr}");
    assert_eq!(v["messages"], messages.len() as u64, "{v}");
    Ok(())
}

/// A partitioned topic, batched, cut every 150 messages (so batches are split across objects):
/// each partition's ids are continuous across the objects, batch splits included, and --deep
/// agrees with every entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_batched_backup_cut_inside_batches_verifies_clean() -> anyhow::Result<()> {
    let pulsar = harness::PulsarLite::start_with_partitions(3).await?;
    let stack = Stack::builder().pulsar(pulsar).start().await?;
    let topic = unique_topic("verify-parts");
    let full_topic = format!("persistent://public/default/{topic}");
    let messages = sample_messages(3_000, 21);
    produce(&stack.pulsar.url(), &full_topic, &messages, true).await?;
    stack.create_rule(
        "vp",
        &topic,
        &["--prefix", "p/", "--window", "1h", "--max-messages", "150"],
    )?;
    stack
        .wait_until_backed_up("vp", messages.len() as u64, Duration::from_secs(180))
        .await?;
    let client = stack.s3.client();
    let entries = list(&client, "p/.tdmq-backup/manifest/vp/").await?;
    let mut partitions = BTreeSet::new();
    let mut split_batches = 0;
    for (key, _) in &entries {
        let entry: Value = serde_json::from_slice(&get(&client, key).await?)?;
        for span in entry["partitions"].as_array().into_iter().flatten() {
            partitions.insert(span["partition"].as_i64().unwrap_or(-9));
            if span["last_completes_entry"] == false {
                split_batches += 1;
            }
        }
    }
    assert_eq!(partitions, [0, 1, 2].into_iter().collect(), "{entries:?}");
    println!(
        "{} objects, {split_batches} partition spans ending inside a batch",
        entries.len()
    );
    for args in [vec!["vp"], vec!["vp", "--deep"]] {
        let (code, v, stderr) = verify_json(&stack, &args).await?;
        assert_eq!(code, 0, "{v}\n{stderr}");
        assert_eq!(v["messages"], messages.len() as u64, "{v}");
        assert_eq!(v["objects"], entries.len() as u64, "{v}");
    }
    Ok(())
}
