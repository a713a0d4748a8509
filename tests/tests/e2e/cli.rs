//! Every CLI command against the real daemons: the rule lifecycle (create from a file, edit,
//! pause/resume, flush, delete with --drain / --discard), `status` (and `--watch`), `logs` (its
//! filters and `--follow`) and `segments`. Each test runs the real `tdmq-backup` binary.

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use harness::{check_exactly_once, produce, read_all, sample_messages};
use serde_json::Value;

use crate::util::{eventually, messages_left, unique_topic, Stack, BUCKET};

// ------------------------------------------------------------------ helpers

fn full(topic: &str) -> String {
    format!("persistent://public/default/{topic}")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The log entries of `logs NAME [extra...]`, newest first.
fn log_entries(stack: &Stack, name: &str, extra: &[&str]) -> anyhow::Result<Vec<Value>> {
    let mut args = vec!["logs", name];
    args.extend_from_slice(extra);
    let logs = stack.ctl_json(&args)?;
    logs["entries"]
        .as_array()
        .cloned()
        .with_context(|| format!("no entries array: {logs}"))
}

fn kinds(entries: &[Value]) -> Vec<String> {
    entries
        .iter()
        .map(|e| e["kind"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// `tdmq-backup` running in the background with its stdout collected line by line; killed (by
/// its own PID) when dropped.
struct Background {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Background {
    fn spawn(stack: &Stack, args: &[&str]) -> anyhow::Result<Background> {
        let mut child = Command::new(harness::bin_path("tdmq-backup"))
            .args(["--ingester", &stack.ingester_url()])
            .args(["--uploader", &stack.uploader_url()])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("spawning tdmq-backup")?;
        let out = child.stdout.take().context("no stdout pipe")?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if let Ok(mut all) = sink.lock() {
                    all.push(line);
                }
            }
        });
        Ok(Background { child, lines })
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Still running (a watch/follow must not exit by itself).
    fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits until the collected lines satisfy `check`.
    async fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        check: impl Fn(&[String]) -> bool,
    ) -> anyhow::Result<Vec<String>> {
        let deadline = Instant::now() + timeout;
        loop {
            let lines = self.lines();
            if check(&lines) {
                return Ok(lines);
            }
            if Instant::now() > deadline {
                bail!(
                    "timed out after {timeout:?} waiting for {what}; output so far:\n{}",
                    lines.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ------------------------------------------------------------------ rule create / list / show

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rule_create_from_file_then_list_and_show() -> anyhow::Result<()> {
    let mut stack = Stack::services().await?;
    stack.start_ingester().await?;
    let topic = unique_topic("fromfile");
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("pulsar.token"), "tok-from-file-777\n")?;
    let rule_file = dir.path().join("rule.toml");
    std::fs::write(
        &rule_file,
        format!(
            r#"name = "from-file"
service_url = "{url}"
topic = "{topic}"
subscription = "tdmq-backup"
bucket = "{BUCKET}"
region = "us-east-1"
endpoint = "{endpoint}"
prefix = "ff/"
window = "1h"
max_messages = 100
max_bytes = 2000000
cluster = "cluster-f"
token_file = "pulsar.token"
"#,
            url = stack.pulsar.url(),
            endpoint = stack.s3.endpoint(),
        ),
    )?;
    let rule_path = rule_file.to_string_lossy().into_owned();
    let created = stack.ctl_json(&["rule", "create", "--from-file", &rule_path])?;
    assert_eq!(created["name"], "from-file", "{created}");
    assert_eq!(created["has_token"], true, "{created}");

    let list = stack.ctl_json(&["rule", "list"])?;
    let rules = list["rules"].as_array().context("rules")?;
    assert_eq!(rules.len(), 1, "{list}");
    let rule = &rules[0];
    assert_eq!(rule["name"], "from-file");
    assert_eq!(rule["topic"], full(&topic).as_str());
    assert_eq!(rule["subscription"], "tdmq-backup");
    assert_eq!(rule["bucket"], BUCKET);
    assert_eq!(rule["prefix"], "ff/");
    assert_eq!(rule["window_secs"], 3600);
    assert_eq!(rule["max_messages"], 100);
    assert_eq!(rule["max_bytes"], 2_000_000);
    assert_eq!(rule["cluster"], "cluster-f");
    assert_eq!(rule["paused"], false);

    let mut shown = stack.ctl_json(&["rule", "show", "from-file"])?;
    // The live state may move on between the two calls (the rule connects, or reports that no
    // uploader has taken a segment yet); everything else must agree.
    let mut listed = rule.clone();
    for v in [&mut shown, &mut listed] {
        if let Some(o) = v.as_object_mut() {
            o.remove("state");
            o.remove("state_reason");
        }
    }
    assert_eq!(shown, listed, "show and list agree");
    let table = stack.ctl(&["rule", "show", "from-file"]);
    assert!(table.status.success(), "{}", stderr(&table));
    let table = stdout(&table);
    assert!(
        table.contains("prefix:") && table.contains("ff/"),
        "{table}"
    );
    let list_table = stdout(&stack.ctl(&["rule", "list"]));
    assert!(list_table.starts_with("NAME"), "{list_table}");
    assert!(list_table.contains("from-file"), "{list_table}");
    for text in [list.to_string(), shown.to_string(), table] {
        assert!(!text.contains("tok-from-file-777"), "token leaked: {text}");
    }

    // The same name again is refused; the history records the creation.
    let again = stack.ctl(&["rule", "create", "--from-file", &rule_path]);
    assert!(!again.status.success());
    assert!(stderr(&again).contains("from-file"), "{}", stderr(&again));
    let entries = log_entries(&stack, "from-file", &[])?;
    assert!(
        kinds(&entries).contains(&"rule_created".into()),
        "{entries:?}"
    );

    // And it backs up, with the file's caps.
    let messages = sample_messages(150, 21);
    produce(&stack.pulsar.url(), &full(&topic), &messages, true).await?;
    stack.start_uploader().await?;
    stack
        .wait_until_backed_up("from-file", 150, Duration::from_secs(60))
        .await?;
    let objects = read_all(&stack.s3.client(), BUCKET, "ff/").await?;
    let report = check_exactly_once(&objects, &messages)?;
    assert!(report.max_records_per_object <= 100, "{report:?}");
    Ok(())
}

// ------------------------------------------------------------------ rule edit

/// Caps and prefix changes apply from the next segment: objects cut before the edit keep the old
/// cap and prefix, objects after it the new ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rule_edit_of_caps_and_prefix_applies_from_the_next_segment() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let topic = unique_topic("edit");
    let messages = sample_messages(500, 22);
    let (before, after) = messages.split_at(300);
    stack.create_rule(
        "edited",
        &topic,
        &[
            "--window",
            "1h",
            "--max-messages",
            "200",
            "--prefix",
            "old/",
        ],
    )?;
    produce(&stack.pulsar.url(), &full(&topic), before, true).await?;
    stack
        .wait_until_backed_up("edited", 300, Duration::from_secs(60))
        .await?;

    let edited = stack.ctl_json(&[
        "rule",
        "edit",
        "edited",
        "--max-messages",
        "50",
        "--prefix",
        "new/",
    ])?;
    assert_eq!(edited["max_messages"], 50, "{edited}");
    assert_eq!(edited["prefix"], "new/", "{edited}");
    // Names can't change; a bad value is refused naming the field and changes nothing.
    let bad = stack.ctl(&["rule", "edit", "edited", "--prefix", "nope"]);
    assert!(!bad.status.success());
    assert!(stderr(&bad).contains("prefix"), "{}", stderr(&bad));
    assert_eq!(
        stack.ctl_json(&["rule", "show", "edited"])?["prefix"],
        "new/"
    );

    produce(&stack.pulsar.url(), &full(&topic), after, true).await?;
    stack
        .wait_until_backed_up("edited", 500, Duration::from_secs(60))
        .await?;

    let old = read_all(&stack.s3.client(), BUCKET, "old/").await?;
    let new = read_all(&stack.s3.client(), BUCKET, "new/").await?;
    let all: Vec<_> = old.iter().chain(new.iter()).cloned().collect();
    check_exactly_once(&all, &messages)?;
    let old_counts: Vec<usize> = old.iter().map(|o| o.records.len()).collect();
    let new_counts: Vec<usize> = new.iter().map(|o| o.records.len()).collect();
    assert_eq!(old_counts.iter().sum::<usize>(), 300, "{old_counts:?}");
    assert!(old_counts.contains(&200), "old cap applied: {old_counts:?}");
    assert_eq!(new_counts.iter().sum::<usize>(), 200, "{new_counts:?}");
    assert!(new_counts.iter().all(|&n| n <= 50), "{new_counts:?}");
    assert!(new_counts.len() >= 4, "{new_counts:?}");

    let entries = log_entries(&stack, "edited", &["--limit", "1000"])?;
    let edit = entries
        .iter()
        .find(|e| e["kind"] == "rule_edited")
        .with_context(|| format!("no rule_edited entry: {entries:?}"))?;
    let message = edit["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("max_messages") && message.contains("prefix"),
        "{message}"
    );
    assert!(!message.contains("service_url"), "{message}");
    Ok(())
}

/// A change of service URL restarts the consumer: pointed at nothing it disconnects (and says
/// why), pointed back it reconnects and backs up what was produced meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rule_edit_of_the_service_url_restarts_the_consumer() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let topic = unique_topic("moved");
    let messages = sample_messages(200, 23);
    let (before, after) = messages.split_at(100);
    stack.create_rule("moved", &topic, &["--window", "1h"])?;
    produce(&stack.pulsar.url(), &full(&topic), before, true).await?;
    stack
        .wait_until_backed_up("moved", 100, Duration::from_secs(60))
        .await?;

    // A port held for the test and never listened on: connections are refused, and no other
    // process can start listening there.
    let nowhere = harness::PortHold::any()?;
    let dead = format!("pulsar://{}", nowhere.addr());
    let edited = stack.ctl_json(&["rule", "edit", "moved", "--service-url", &dead])?;
    assert_eq!(edited["service_url"], dead.as_str());
    let status = eventually(
        "the consumer to disconnect",
        Duration::from_secs(30),
        || {
            let s = stack.rule_status("moved")?;
            Ok((s["consumer_connected"] == false && s["state"] == "error").then_some(s))
        },
    )
    .await?;
    assert!(
        status["state_reason"]
            .as_str()
            .is_some_and(|r| !r.is_empty()),
        "{status}"
    );

    produce(&stack.pulsar.url(), &full(&topic), after, true).await?;
    let url = stack.pulsar.url();
    let started = Instant::now();
    stack.ctl_json(&["rule", "edit", "moved", "--service-url", &url])?;
    println!("edit back took {:?}", started.elapsed());
    stack
        .wait_until_backed_up("moved", 200, Duration::from_secs(60))
        .await?;
    let status = stack.rule_status("moved")?;
    assert_eq!(status["state"], "running", "{status}");
    let objects = read_all(&stack.s3.client(), BUCKET, "").await?;
    check_exactly_once(&objects, &messages)?;
    let entries = log_entries(&stack, "moved", &["--limit", "1000"])?;
    let edits: Vec<&Value> = entries
        .iter()
        .filter(|e| e["kind"] == "rule_edited")
        .collect();
    assert_eq!(edits.len(), 2, "{entries:?}");
    assert!(edits.iter().all(|e| e["message"]
        .as_str()
        .is_some_and(|m| m.contains("service_url"))));
    Ok(())
}

// ------------------------------------------------------------------ pause / resume

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rule_pause_stops_consuming_and_resume_backs_everything_up() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let topic = unique_topic("paused");
    let messages = sample_messages(300, 24);
    let (before, during) = messages.split_at(100);
    stack.create_rule("pausy", &topic, &["--window", "1h"])?;
    produce(&stack.pulsar.url(), &full(&topic), before, true).await?;
    stack
        .wait_until_backed_up("pausy", 100, Duration::from_secs(60))
        .await?;

    let paused = stack.ctl_json(&["rule", "pause", "pausy"])?;
    assert_eq!(paused["paused"], true, "{paused}");
    let text = stdout(&stack.ctl(&["rule", "show", "pausy"]));
    assert!(text.contains("paused"), "{text}");
    produce(&stack.pulsar.url(), &full(&topic), during, true).await?;
    for _ in 0..6 {
        let s = stack.rule_status("pausy")?;
        assert_eq!(s["state"], "paused", "{s}");
        assert_eq!(s["messages_consumed"], 100, "consumed while paused: {s}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    let resumed = stack.ctl_json(&["rule", "resume", "pausy"])?;
    assert_eq!(resumed["paused"], false, "{resumed}");
    let status = stack
        .wait_until_backed_up("pausy", 300, Duration::from_secs(60))
        .await?;
    assert_eq!(status["state"], "running", "{status}");
    let objects = read_all(&stack.s3.client(), BUCKET, "").await?;
    check_exactly_once(&objects, &messages)?;
    let entries = log_entries(&stack, "pausy", &["--limit", "1000"])?;
    let k = kinds(&entries);
    let resumed_at = k.iter().position(|k| k == "resumed").context("resumed")?;
    let paused_at = k.iter().position(|k| k == "paused").context("paused")?;
    assert!(resumed_at < paused_at, "newest first: {k:?}");
    Ok(())
}

// ------------------------------------------------------------------ flush / segments / delete

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rule_flush_seals_the_open_segment_and_segments_lists_it() -> anyhow::Result<()> {
    let mut stack = Stack::services().await?;
    stack.start_ingester().await?; // no uploader: segments wait
    let topic = unique_topic("flushy");
    let messages = sample_messages(120, 25);
    stack.create_rule(
        "flushy",
        &topic,
        &["--window", "1h", "--max-messages", "100"],
    )?;
    produce(&stack.pulsar.url(), &full(&topic), &messages, true).await?;
    eventually("120 messages spooled", Duration::from_secs(30), || {
        let s = stack.rule_status("flushy")?;
        Ok((s["messages_consumed"] == 120).then_some(()))
    })
    .await?;
    let s = stack.rule_status("flushy")?;
    assert_eq!(s["open_segment_messages"], 20, "{s}");

    let flushed = stack.ctl_json(&["rule", "flush", "flushy"])?;
    assert_eq!(flushed["sealed"], true, "{flushed}");
    let sealed_no = flushed["segment_no"].as_u64().context("segment_no")?;
    let again = stack.ctl_json(&["rule", "flush", "flushy"])?;
    assert_eq!(again["sealed"], false, "{again}");
    let text = stdout(&stack.ctl(&["rule", "flush", "flushy"]));
    assert!(text.contains("nothing to seal"), "{text}");

    let segments = eventually("both segments sealed", Duration::from_secs(30), || {
        let v = stack.ctl_json(&["segments", "flushy"])?;
        let list = v["segments"].as_array().cloned().unwrap_or_default();
        Ok((list.len() == 2 && list.iter().all(|s| s["state"] == "sealed")).then_some(list))
    })
    .await?;
    let counts: Vec<u64> = segments
        .iter()
        .map(|s| s["messages"].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(counts, [100, 20], "{segments:?}");
    for s in &segments {
        assert_eq!(s["rule"], "flushy");
        assert!(
            s["object_key"]
                .as_str()
                .is_some_and(|k| k.ends_with(".jsonl.gz")),
            "{s}"
        );
        assert!(
            !s["first_message_id"]
                .as_str()
                .unwrap_or_default()
                .is_empty(),
            "{s}"
        );
    }
    assert_eq!(segments[1]["segment_no"], sealed_no);
    let table = stdout(&stack.ctl(&["segments", "flushy"]));
    assert!(
        table.starts_with("NO") && table.contains("sealed"),
        "{table}"
    );
    let status = stack.rule_status("flushy")?;
    assert_eq!(status["sealed_segments"], 2, "{status}");
    assert_eq!(status["spooled_messages"], 120, "{status}");

    let entries = log_entries(&stack, "flushy", &[])?;
    let messages: Vec<&str> = entries
        .iter()
        .filter(|e| e["kind"] == "flushed")
        .filter_map(|e| e["message"].as_str())
        .collect();
    assert!(
        messages.contains(&format!("flushed: sealed segment {sealed_no}").as_str()),
        "{messages:?}"
    );
    assert!(messages.contains(&"flushed: nothing open"), "{messages:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rule_delete_refuses_unstored_segments_unless_discard_yes() -> anyhow::Result<()> {
    let mut stack = Stack::start().await?;
    let topic = unique_topic("doomed");
    let messages = sample_messages(150, 26);
    stack.create_rule(
        "doomed",
        &topic,
        &["--window", "1h", "--max-messages", "100"],
    )?;
    // The uploader goes away: what is consumed from now on stays unstored.
    if let Some(mut uploader) = stack.uploader.take() {
        uploader.kill9()?;
    }
    produce(&stack.pulsar.url(), &full(&topic), &messages, true).await?;
    eventually("150 messages spooled", Duration::from_secs(30), || {
        let s = stack.rule_status("doomed")?;
        Ok((s["messages_consumed"] == 150).then_some(()))
    })
    .await?;

    let refused = stack.ctl(&["rule", "delete", "doomed"]);
    assert!(!refused.status.success());
    let err = stderr(&refused);
    assert!(
        err.contains("not yet stored") && err.contains("--drain") && err.contains("--discard"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    // --discard asks first; without a terminal it refuses and says --yes.
    let unconfirmed = stack.ctl(&["rule", "delete", "doomed", "--discard"]);
    assert!(!unconfirmed.status.success());
    assert!(
        stderr(&unconfirmed).contains("--yes"),
        "{}",
        stderr(&unconfirmed)
    );
    assert_eq!(
        stack.ctl_json(&["rule", "list"])?["rules"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );

    let deleted = stack.ctl_json(&["rule", "delete", "doomed", "--discard", "--yes"])?;
    assert_eq!(deleted["deleted"], "doomed", "{deleted}");
    assert_eq!(deleted["segments_discarded"], 2, "{deleted}");
    assert_eq!(
        stack.ctl_json(&["rule", "list"])?["rules"]
            .as_array()
            .map(Vec::len),
        Some(0)
    );
    let gone = stack.ctl(&["rule", "show", "doomed"]);
    assert!(!gone.status.success());
    // Discarded means never acknowledged: the subscription still holds every message.
    let left = messages_left(&stack, &full(&topic)).await?;
    assert_eq!(
        left, 150,
        "discarded messages must stay on the subscription"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rule_delete_drain_stores_everything_then_deletes() -> anyhow::Result<()> {
    let mut stack = Stack::services().await?;
    stack.start_ingester().await?;
    let topic = unique_topic("drained");
    let messages = sample_messages(250, 27);
    stack.create_rule(
        "drained",
        &topic,
        &["--window", "1h", "--max-messages", "100"],
    )?;
    produce(&stack.pulsar.url(), &full(&topic), &messages, true).await?;
    eventually("250 messages spooled", Duration::from_secs(30), || {
        let s = stack.rule_status("drained")?;
        Ok((s["messages_consumed"] == 250).then_some(()))
    })
    .await?;
    // Two full segments sealed, 50 messages still in the open one; nothing stored yet.
    assert_eq!(stack.rule_status("drained")?["open_segment_messages"], 50);

    stack.start_uploader().await?;
    let deleted = stack.ctl_json(&["rule", "delete", "drained", "--drain"])?;
    assert_eq!(deleted["deleted"], "drained", "{deleted}");
    assert_eq!(deleted["segments_discarded"], 0, "{deleted}");
    assert_eq!(
        stack.ctl_json(&["rule", "list"])?["rules"]
            .as_array()
            .map(Vec::len),
        Some(0)
    );

    let objects = read_all(&stack.s3.client(), BUCKET, "").await?;
    let report = check_exactly_once(&objects, &messages)?;
    assert_eq!(report.objects, 3, "{report:?}");
    let left = messages_left(&stack, &full(&topic)).await?;
    assert_eq!(left, 0, "drained messages must all be acknowledged");
    Ok(())
}

// ------------------------------------------------------------------ status

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_both_daemons_and_every_rule_as_table_and_json() -> anyhow::Result<()> {
    let mut stack = Stack::start().await?;
    let topic = unique_topic("stat");
    let messages = sample_messages(100, 28);
    stack.create_rule("stat-a", &topic, &["--window", "1h"])?;
    stack.create_rule(
        "stat-b",
        &unique_topic("stat-other"),
        &["--window", "1h", "--prefix", "b/"],
    )?;
    produce(&stack.pulsar.url(), &full(&topic), &messages, true).await?;
    stack
        .wait_until_backed_up("stat-a", 100, Duration::from_secs(60))
        .await?;

    let v = stack.ctl_json(&["status"])?;
    assert_eq!(v["ingester"]["reachable"], true, "{v}");
    assert_eq!(v["ingester"]["url"], stack.ingester_url().as_str());
    assert!(v["ingester"]["version"]
        .as_str()
        .is_some_and(|s| !s.is_empty()));
    assert_eq!(v["uploader"]["reachable"], true, "{v}");
    assert_eq!(v["uploader"]["ingester_reachable"], true, "{v}");
    assert!(
        v["uploader"]["segments_uploaded"].as_u64() >= Some(1),
        "{v}"
    );
    let rules = v["rules"].as_array().context("rules")?;
    assert_eq!(rules.len(), 2, "{v}");
    let a = rules
        .iter()
        .find(|r| r["name"] == "stat-a")
        .context("stat-a")?;
    for key in [
        "state",
        "state_reason",
        "consumer_connected",
        "messages_consumed",
        "spooled_messages",
        "spooled_bytes",
        "open_segment_age_ms",
        "sealed_segments",
        "last_object_key",
        "last_stored_at",
        "last_error",
        "backlog_age_ms",
        "messages_acked",
    ] {
        assert!(a.get(key).is_some(), "status has no {key}: {a}");
    }
    assert_eq!(a["state"], "running");
    assert_eq!(a["consumer_connected"], true);
    assert_eq!(a["messages_consumed"], 100);
    assert_eq!(a["spooled_messages"], 0);
    assert!(
        a["last_object_key"]
            .as_str()
            .is_some_and(|k| k.contains(&topic)),
        "{a}"
    );
    assert!(
        a["last_stored_at"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')),
        "{a}"
    );

    // One rule only.
    let one = stack.ctl_json(&["status", "stat-b"])?;
    assert_eq!(one["rules"].as_array().map(Vec::len), Some(1), "{one}");
    assert_eq!(one["rules"][0]["name"], "stat-b");
    let missing = stack.ctl(&["status", "no-such-rule"]);
    assert!(!missing.status.success());
    assert!(
        stderr(&missing).contains("no-such-rule"),
        "{}",
        stderr(&missing)
    );

    let table = stack.ctl(&["status"]);
    assert!(table.status.success(), "{}", stderr(&table));
    let table = stdout(&table);
    assert!(
        table.contains(&format!("ingester {}", stack.ingester_url())),
        "{table}"
    );
    assert!(
        table.contains(&format!("uploader {}", stack.uploader_url())),
        "{table}"
    );
    let header = table
        .lines()
        .find(|l| l.starts_with("NAME"))
        .with_context(|| format!("no header: {table}"))?;
    for column in [
        "STATE",
        "CONSUMED",
        "SPOOLED",
        "SEALED",
        "BACKLOG-AGE",
        "LAST-ERROR",
    ] {
        assert!(header.contains(column), "{header}");
    }
    let row = table
        .lines()
        .find(|l| l.starts_with("stat-a "))
        .with_context(|| format!("no stat-a row: {table}"))?;
    assert!(row.contains("running"), "{row}");

    // `-o wide`: every column, nothing shortened.
    let wide = stdout(&stack.ctl(&["status", "-o", "wide"]));
    let wide_header = wide
        .lines()
        .find(|l| l.starts_with("NAME"))
        .with_context(|| format!("no header: {wide}"))?;
    for column in ["CONNECTED", "SPOOLED-BYTES", "LAST-OBJECT"] {
        assert!(wide_header.contains(column), "{wide_header}");
    }
    let last_key = a["last_object_key"].as_str().unwrap_or_default();
    assert!(
        wide.contains(last_key),
        "the wide table holds the whole key: {wide}"
    );

    // At 80 columns every table line fits, as the rule list and the logs do.
    for args in [&["status"][..], &["rule", "list"], &["logs", "stat-a"]] {
        let out = stack.ctl_with_env(args, &[("COLUMNS", "80")]);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        let text = stdout(&out);
        for line in text.lines() {
            // The daemons' lines carry URLs and errors, which wrap; the tables must fit.
            if line.starts_with("ingester ")
                || line.starts_with("uploader ")
                || line.starts_with("  ")
            {
                continue;
            }
            assert!(
                line.chars().count() <= 80,
                "{args:?}: {} columns: {line:?}\n{text}",
                line.chars().count()
            );
        }
    }

    // A dead uploader is shown with why, beside everything the ingester says; the exit status
    // (5, unreachable) tells a script.
    if let Some(mut uploader) = stack.uploader.take() {
        uploader.kill9()?;
    }
    let out = stack.ctl(&["-o", "json", "status"]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("cannot reach the uploader"),
        "{}",
        stderr(&out)
    );
    let v: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(v["rules"].as_array().map(Vec::len), Some(2), "{v}");
    assert_eq!(v["uploader"]["reachable"], false, "{v}");
    assert!(
        v["uploader"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("uploader")),
        "{v}"
    );
    let table = stdout(&stack.ctl(&["status"]));
    assert!(table.contains("cannot reach the uploader"), "{table}");
    assert!(table.contains("stat-a"), "{table}");
    // A dead ingester: the uploader's part is still shown, exit 5.
    let dead = stack.ctl(&["--ingester", "http://127.0.0.1:9", "-o", "json", "status"]);
    assert_eq!(dead.status.code(), Some(5), "{}", stderr(&dead));
    let v: Value = serde_json::from_slice(&dead.stdout)?;
    assert_eq!(v["ingester"]["reachable"], false, "{v}");
    assert_eq!(v["rules"], serde_json::json!([]), "{v}");

    // Paused shows as paused.
    stack.ctl_json(&["rule", "pause", "stat-b"])?;
    let b = stack.rule_status("stat-b")?;
    assert_eq!(b["state"], "paused", "{b}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_watch_refreshes_until_killed() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let topic = unique_topic("watched");
    stack.create_rule("watched", &topic, &["--window", "1h"])?;

    let mut table = Background::spawn(&stack, &["status", "--watch", "300ms"])?;
    let mut json = Background::spawn(
        &stack,
        &["--output", "json", "status", "watched", "--watch", "300ms"],
    )?;
    let messages = sample_messages(100, 29);
    produce(&stack.pulsar.url(), &full(&topic), &messages, true).await?;

    // The JSON watch prints one document a line, and later ones see the new messages.
    let lines = json
        .wait_for(
            "a refresh showing 100 consumed",
            Duration::from_secs(30),
            |lines| {
                lines.iter().any(|l| {
                    serde_json::from_str::<Value>(l)
                        .is_ok_and(|v| v["rules"][0]["messages_consumed"] == 100)
                })
            },
        )
        .await?;
    let docs: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).with_context(|| format!("not one JSON line: {l}")))
        .collect::<anyhow::Result<_>>()?;
    assert!(docs.len() >= 2, "{lines:?}");
    assert!(docs.iter().all(|d| d["rules"][0]["name"] == "watched"));

    // The table watch (stdout is a pipe: no ANSI) prints titled tables separated by blank lines.
    let lines = table
        .wait_for("three refreshes", Duration::from_secs(20), |lines| {
            lines
                .iter()
                .filter(|l| l.starts_with("every 300ms: tdmq-backup status"))
                .count()
                >= 3
        })
        .await?;
    assert!(lines.iter().all(|l| !l.contains('\x1b')), "{lines:?}");
    let titles: Vec<usize> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.starts_with("every 300ms"))
        .map(|(i, _)| i)
        .collect();
    for &i in titles.iter().skip(1) {
        assert_eq!(
            lines[i - 1],
            "",
            "a blank line before each refresh: {lines:?}"
        );
    }
    assert!(lines.iter().any(|l| l.starts_with("NAME")), "{lines:?}");
    assert!(lines.iter().any(|l| l.starts_with("watched ")), "{lines:?}");
    assert!(
        table.running() && json.running(),
        "a watch runs until stopped"
    );
    drop(table);
    drop(json);

    // A wrong rule fails at once instead of watching an error.
    let out = stack.ctl(&["status", "nope", "--watch", "300ms"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("nope"), "{}", stderr(&out));
    Ok(())
}

// ------------------------------------------------------------------ logs

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_show_stored_objects_and_failures_with_filters() -> anyhow::Result<()> {
    let mut stack = Stack::start().await?;
    let topic = unique_topic("logged");
    let messages = sample_messages(200, 30);
    let (first, second) = messages.split_at(100);
    stack.create_rule("logged", &topic, &["--window", "1h"])?;
    produce(&stack.pulsar.url(), &full(&topic), first, true).await?;
    stack
        .wait_until_backed_up("logged", 100, Duration::from_secs(60))
        .await?;

    // The store goes down: the next segment's upload fails, and the ingester records it.
    stack.s3.stop().await;
    produce(&stack.pulsar.url(), &full(&topic), second, true).await?;
    eventually("200 consumed", Duration::from_secs(30), || {
        Ok((stack.rule_status("logged")?["messages_consumed"] == 200).then_some(()))
    })
    .await?;
    stack.ctl_json(&["rule", "flush", "logged"])?;
    let failed = eventually(
        "an upload failure in the logs",
        Duration::from_secs(60),
        || {
            let failed = log_entries(&stack, "logged", &["--failed"])?;
            Ok(failed
                .iter()
                .any(|e| e["kind"] == "upload_failed")
                .then_some(failed))
        },
    )
    .await?;
    assert!(failed.iter().all(|e| e["failed"] == true), "{failed:?}");
    let failure = failed
        .iter()
        .find(|e| e["kind"] == "upload_failed")
        .context("upload_failed")?;
    assert!(
        failure["message"]
            .as_str()
            .is_some_and(|m| m.contains("upload of segment")),
        "{failure}"
    );
    assert!(failure["attempts"].as_u64() >= Some(1), "{failure}");
    let status = stack.rule_status("logged")?;
    assert!(
        status["last_error"].as_str().is_some_and(|e| !e.is_empty()),
        "{status}"
    );

    stack.s3.restart().await?;
    stack
        .wait_until_backed_up("logged", 200, Duration::from_secs(90))
        .await?;
    let objects = read_all(&stack.s3.client(), BUCKET, "").await?;
    check_exactly_once(&objects, &messages)?;

    let all = log_entries(&stack, "logged", &["--limit", "1000"])?;
    let stored: Vec<&Value> = all.iter().filter(|e| e["kind"] == "stored").collect();
    assert_eq!(stored.len(), objects.len(), "{all:?}");
    for e in &stored {
        assert!(
            e["object_key"]
                .as_str()
                .is_some_and(|k| objects.iter().any(|o| o.key == k)),
            "{e}"
        );
        assert!(e["messages"].as_u64() >= Some(1), "{e}");
        assert!(e["bytes"].as_u64() >= Some(1), "{e}");
        assert!(
            e["window_start"].as_str().is_some_and(|w| w.ends_with('Z')),
            "{e}"
        );
        assert!(e["attempts"].as_u64() >= Some(1), "{e}");
    }
    let retried = stored
        .iter()
        .find(|e| e["attempts"].as_u64() > Some(1))
        .with_context(|| {
            format!("the stored entry after the outage shows its attempts: {stored:?}")
        })?;
    assert!(retried["duration_ms"].is_u64(), "{retried}");
    // Newest first.
    let times: Vec<&str> = all.iter().filter_map(|e| e["at"].as_str()).collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "{times:?}");

    let limited = log_entries(&stack, "logged", &["--limit", "2"])?;
    assert_eq!(limited.len(), 2, "{limited:?}");
    assert_eq!(limited[0], all[0]);
    assert_eq!(limited[1], all[1]);
    let failed_limited = log_entries(&stack, "logged", &["--failed", "--limit", "1"])?;
    assert_eq!(failed_limited.len(), 1);
    assert_eq!(failed_limited[0]["failed"], true);

    assert_eq!(
        log_entries(&stack, "logged", &["--since", "1h", "--limit", "1000"])?,
        all
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let recent = log_entries(&stack, "logged", &["--since", "1s"])?;
    assert!(
        recent.is_empty(),
        "nothing happened in the last second: {recent:?}"
    );
    stack.ctl_json(&["rule", "flush", "logged"])?;
    let recent = log_entries(&stack, "logged", &["--since", "2s"])?;
    assert_eq!(kinds(&recent), ["flushed"], "{recent:?}");

    let table = stdout(&stack.ctl(&["logs", "logged", "--limit", "5"]));
    assert!(table.starts_with("AT"), "{table}");
    assert!(table.contains("KEY/ERROR"), "{table}");
    let missing = stack.ctl(&["logs", "no-such-rule"]);
    assert!(!missing.status.success());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_follow_prints_new_entries_as_they_happen() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let topic = unique_topic("followed");
    stack.create_rule("followed", &topic, &["--window", "1h"])?;

    let mut json = Background::spawn(
        &stack,
        &["--output", "json", "logs", "followed", "--follow"],
    )?;
    let mut table = Background::spawn(&stack, &["logs", "followed", "--follow"])?;
    json.wait_for("the creation entry", Duration::from_secs(10), |lines| {
        lines.iter().any(|l| l.contains("rule_created"))
    })
    .await?;

    stack.ctl_json(&["rule", "pause", "followed"])?;
    stack.ctl_json(&["rule", "resume", "followed"])?;
    let messages = sample_messages(50, 31);
    produce(&stack.pulsar.url(), &full(&topic), &messages, true).await?;
    stack
        .wait_until_backed_up("followed", 50, Duration::from_secs(60))
        .await?;

    let lines = json
        .wait_for(
            "paused, resumed and stored entries",
            Duration::from_secs(10),
            |lines| lines.iter().any(|l| l.contains("\"stored\"")),
        )
        .await?;
    let entries: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).with_context(|| format!("not one JSON line: {l}")))
        .collect::<anyhow::Result<_>>()?;
    let k = kinds(&entries);
    let pos = |kind: &str| k.iter().position(|x| x == kind);
    let (created, paused, resumed, stored) = (
        pos("rule_created").context("rule_created")?,
        pos("paused").context("paused")?,
        pos("resumed").context("resumed")?,
        pos("stored").context("stored")?,
    );
    assert!(
        created < paused && paused < resumed && resumed < stored,
        "oldest first: {k:?}"
    );
    // Each entry once.
    let distinct: std::collections::HashSet<&String> = lines.iter().collect();
    assert_eq!(
        distinct.len(),
        lines.len(),
        "an entry printed twice: {lines:?}"
    );
    // The follower agrees with a one-shot `logs` (which is newest first).
    let mut once = log_entries(&stack, "followed", &["--limit", "1000"])?;
    once.reverse();
    let printed: Vec<Value> = json
        .wait_for("every entry", Duration::from_secs(5), |l| {
            l.len() >= once.len()
        })
        .await?
        .iter()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert_eq!(printed.get(..once.len()), Some(once.as_slice()));

    let lines = table
        .wait_for(
            "the table to show the stored object",
            Duration::from_secs(10),
            |lines| lines.iter().any(|l| l.contains(" stored ")),
        )
        .await?;
    assert!(
        lines[0].starts_with("AT") && lines[0].contains("KEY/ERROR"),
        "{lines:?}"
    );
    assert!(lines.iter().any(|l| l.contains("paused")), "{lines:?}");
    assert!(
        json.running() && table.running(),
        "--follow runs until stopped"
    );
    Ok(())
}
