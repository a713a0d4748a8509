//! ctl with several ingesters (`--ingester A --ingester B`, or `--ingester A,B`): rule commands
//! go to each, `status` and `logs` put both together, and an ingester that is down is named
//! while the other still gets the command.

use std::time::Duration;

use anyhow::Context as _;
use harness::{produce, sample_messages};
use serde_json::Value;

use crate::util::{eventually, unique_topic, Stack};

fn exit_code(out: &std::process::Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

fn json_of(out: &std::process::Output) -> anyhow::Result<Value> {
    serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "no JSON (exit {:?}): {}{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_sends_rule_commands_to_every_ingester_and_merges_status_and_logs() -> anyhow::Result<()>
{
    let stack = Stack::start().await?;
    let a = stack.ingester_url();
    let mut ingester_b = stack.spawn_ingester("ingester-b", 0)?;
    let b = format!(
        "http://{}",
        ingester_b.wait_ready(stack.ready_timeout).await?
    );
    let mut uploader_b = stack.spawn_uploader("uploader-b", &b)?;
    uploader_b.wait_ready(stack.ready_timeout).await?;
    let both = format!("{a},{b}");

    // One create, as a comma-separated list: both ingesters hold the rule.
    let topic = unique_topic("fleet");
    let mut create = vec![
        "--ingester".to_string(),
        both.clone(),
        "-o".into(),
        "json".into(),
    ];
    create.extend(stack.create_rule_args("fleet", &topic, &["--window", "1s"]));
    let create: Vec<&str> = create.iter().map(String::as_str).collect();
    let out = stack.ctl(&create);
    assert_eq!(
        exit_code(&out),
        0,
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let created = json_of(&out)?;
    let answers = created["ingesters"].as_array().context("ingesters")?;
    assert_eq!(answers.len(), 2, "{created}");
    for (answer, url) in answers.iter().zip([&a, &b]) {
        assert_eq!(answer["url"], url.as_str(), "{created}");
        assert_eq!(answer["ok"], true, "{created}");
        assert_eq!(answer["result"]["name"], "fleet", "{created}");
    }
    for url in [&a, &b] {
        let list = stack.ctl_json(&["--ingester", url, "rule", "list"])?;
        assert!(list.to_string().contains("\"fleet\""), "{url}: {list}");
    }

    // Failover: one of them consumes; every message is stored once.
    let messages = sample_messages(400, 41);
    produce(
        &stack.pulsar.url(),
        &format!("persistent://public/default/{topic}"),
        &messages,
        true,
    )
    .await?;
    let status = eventually(
        "both ingesters' counts to add up",
        Duration::from_secs(120),
        || {
            let out = stack.ctl(&["--ingester", &a, "--ingester", &b, "-o", "json", "status"]);
            let status = json_of(&out)?;
            let acked: u64 = status["rules"]
                .as_array()
                .map(|rules| {
                    rules
                        .iter()
                        .filter_map(|r| r["messages_acked"].as_u64())
                        .sum()
                })
                .unwrap_or(0);
            Ok((exit_code(&out) == 0 && acked == 400).then_some(status))
        },
    )
    .await?;
    let rules = status["rules"].as_array().context("rules")?;
    assert_eq!(rules.len(), 2, "{status}");
    let urls: Vec<&str> = rules
        .iter()
        .filter_map(|r| r["ingester"].as_str())
        .collect();
    assert_eq!(urls, [a.as_str(), b.as_str()], "{status}");
    assert_eq!(
        status["ingesters"].as_array().map(Vec::len),
        Some(2),
        "{status}"
    );
    assert_eq!(status["uploader"]["reachable"], true, "{status}");
    let table = stack.ctl(&["--ingester", &both, "status"]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.contains(&format!("ingester {a}: version")), "{text}");
    assert!(text.contains(&format!("ingester {b}: version")), "{text}");
    assert!(
        text.contains(&format!("fleet ({})", &b["http://".len()..])),
        "{text}"
    );

    // logs: both histories, newest first, each entry naming its ingester.
    let logs = stack.ctl_json(&["--ingester", &both, "logs", "fleet"])?;
    let entries = logs["entries"].as_array().context("entries")?;
    assert!(entries.iter().any(|e| e["kind"] == "stored"), "{logs}");
    let times: Vec<&str> = entries.iter().filter_map(|e| e["at"].as_str()).collect();
    let mut sorted = times.clone();
    sorted.sort_by(|x, y| y.cmp(x));
    assert_eq!(times, sorted, "newest first");
    for url in [&a, &b] {
        assert!(
            entries.iter().any(|e| e["ingester"] == url.as_str()),
            "{url}: {logs}"
        );
    }

    // B down: `rule pause` still pauses A, names B and exits "unreachable" (5).
    ingester_b.kill9()?;
    let out = stack.ctl(&["--ingester", &both, "-o", "json", "rule", "pause", "fleet"]);
    assert_eq!(
        exit_code(&out),
        5,
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("1 of 2 ingesters failed") && stderr.contains(&b),
        "{stderr}"
    );
    let paused = json_of(&out)?;
    assert_eq!(paused["ingesters"][0]["ok"], true, "{paused}");
    assert_eq!(paused["ingesters"][1]["ok"], false, "{paused}");
    assert_eq!(paused["ingesters"][1]["exit"], 5, "{paused}");
    let a_status = stack.ctl_json(&["--ingester", &a, "status", "fleet"])?;
    assert_eq!(a_status["rules"][0]["state"], "paused", "{a_status}");

    // status: what A and the uploader say, B named as unreachable, exit 5.
    let out = stack.ctl(&["--ingester", &both, "-o", "json", "status"]);
    assert_eq!(exit_code(&out), 5);
    let status = json_of(&out)?;
    assert_eq!(status["ingesters"][0]["reachable"], true, "{status}");
    assert_eq!(status["ingesters"][1]["reachable"], false, "{status}");
    assert_eq!(
        status["rules"].as_array().map(Vec::len),
        Some(1),
        "{status}"
    );
    Ok(())
}

/// `rule status NAME` on one ingester, as JSON: (messages acknowledged, still spooled).
fn acked_on(stack: &Stack, ingester: &str, rule: &str) -> anyhow::Result<(u64, u64)> {
    let status = stack.ctl_json(&["--ingester", ingester, "status", rule])?;
    let r = &status["rules"][0];
    Ok((
        r["messages_acked"].as_u64().unwrap_or(0),
        r["spooled_messages"].as_u64().unwrap_or(u64::MAX),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_uploader_serves_several_ingesters_and_names_the_one_that_is_down() -> anyhow::Result<()>
{
    let mut stack = Stack::start().await?;
    // The stack's own uploader serves A only: replaced by one that serves A and B.
    stack.uploader = None;
    let a = stack.ingester_url();
    let mut ingester_b = stack.spawn_ingester("ingester-b", 0)?;
    let b = format!(
        "http://{}",
        ingester_b.wait_ready(stack.ready_timeout).await?
    );
    let mut uploader = stack.spawn_uploader("uploader-ab", &format!("{a},{b}"))?;
    stack.uploader_port = uploader.wait_ready(stack.ready_timeout).await?.port();
    stack.uploader = Some(uploader);

    // The same rule name on both, each on its own topic and prefix, in segments of 50: both
    // ingesters number their segments 1, 2, … and the uploader must keep them apart.
    let topics = [unique_topic("two-a"), unique_topic("two-b")];
    let sent = [sample_messages(600, 43), sample_messages(600, 47)];
    for ((url, topic), prefix) in [&a, &b].into_iter().zip(&topics).zip(["a/", "b/"]) {
        let mut create = vec!["--ingester".to_string(), url.clone()];
        create.extend(stack.create_rule_args(
            "two",
            topic,
            &["--prefix", prefix, "--window", "1h", "--max-messages", "50"],
        ));
        stack.ctl_json(&create.iter().map(String::as_str).collect::<Vec<_>>())?;
    }
    for (topic, messages) in topics.iter().zip(&sent) {
        produce(
            &stack.pulsar.url(),
            &format!("persistent://public/default/{topic}"),
            messages,
            true,
        )
        .await?;
    }
    for url in [&a, &b] {
        eventually("every message stored", Duration::from_secs(120), || {
            let _ = stack.ctl(&["--ingester", url, "rule", "flush", "two"]);
            let (acked, spooled) = acked_on(&stack, url, "two")?;
            Ok((acked >= 600 && spooled == 0).then_some(()))
        })
        .await?;
    }
    let client = stack.s3.client();
    for (prefix, messages) in ["a/", "b/"].into_iter().zip(&sent) {
        let objects = harness::read_all(&client, harness::stack::BUCKET, prefix).await?;
        let report = harness::check_exactly_once(&objects, messages)?;
        assert!(report.objects >= 12, "{prefix}: {report:?}");
    }
    let status = stack.ctl_json(&["status"])?;
    assert_eq!(status["uploader"]["ingester_reachable"], true, "{status}");

    // B down: the uploader says which ingester it cannot reach, and still serves A.
    ingester_b.kill9()?;
    let status = eventually("the uploader to name B", Duration::from_secs(60), || {
        let status = stack.ctl_json(&["status"])?;
        let error = status["uploader"]["ingester_error"].as_str().unwrap_or("");
        Ok(
            (status["uploader"]["ingester_reachable"] == false && error.contains(b.as_str()))
                .then_some(status),
        )
    })
    .await?;
    assert!(
        !status["uploader"]["ingester_error"]
            .as_str()
            .unwrap_or("")
            .contains(a.as_str()),
        "{status}"
    );
    let more = sample_messages(700, 43);
    produce(
        &stack.pulsar.url(),
        &format!("persistent://public/default/{}", topics[0]),
        &more[600..],
        true,
    )
    .await?;
    eventually("A's new messages stored", Duration::from_secs(120), || {
        let _ = stack.ctl(&["--ingester", &a, "rule", "flush", "two"]);
        let (acked, spooled) = acked_on(&stack, &a, "two")?;
        Ok((acked >= 700 && spooled == 0).then_some(()))
    })
    .await?;
    let objects = harness::read_all(&client, harness::stack::BUCKET, "a/").await?;
    harness::check_exactly_once(&objects, &more)?;
    Ok(())
}

/// `priority_level` reaches the broker on every partition's subscribe, and an ingester without
/// it leaves the broker's default. (Which level stands by is the broker's rule: Apache Pulsar
/// gives partitions to the lowest level present; pulsar-lite ranks levels the other way, so
/// the standby behaviour itself is not tested here.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ingesters_priority_level_reaches_the_broker() -> anyhow::Result<()> {
    let pulsar = harness::PulsarLite::start_with_debug_log(3).await?;
    let log = pulsar.log_path();
    let stack = Stack::builder().pulsar(pulsar).services().await?;
    let topic = unique_topic("priority");
    let mut ingesters = Vec::new();
    for (name, extra) in [("standby", &["--priority-level", "3"][..]), ("plain", &[])] {
        let mut args = vec!["--node-id", name];
        args.extend_from_slice(extra);
        let mut ingester = stack.spawn_ingester_with(name, 0, &args)?;
        let url = format!("http://{}", ingester.wait_ready(stack.ready_timeout).await?);
        let mut create = vec!["--ingester".to_string(), url];
        create.extend(stack.create_rule_args("prio", &topic, &[]));
        stack.ctl_json(&create.iter().map(String::as_str).collect::<Vec<_>>())?;
        ingesters.push(ingester);
    }
    let levels = |level: u32| {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        text.lines()
            .filter(|l| l.ends_with(&format!("subscribed with priority level {level}")))
            .count()
    };
    eventually(
        "both ingesters' 3 partition consumers subscribed",
        Duration::from_secs(60),
        || Ok((levels(3) >= 3 && levels(0) >= 3).then_some(())),
    )
    .await?;
    assert_eq!(levels(3), 3, "one subscribe per partition at level 3");
    assert_eq!(levels(0), 3, "the other ingester leaves the default");
    Ok(())
}
