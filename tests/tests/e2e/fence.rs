//! Fenced rules (docs/design.md, "Several ingesters on one subscription"): several ingesters
//! share a partitioned topic's subscription and the object store is the fence, so a message is
//! stored exactly once however its partition moves between them.

use std::time::Duration;

use harness::{check_exactly_once, produce, read_all, sample_messages, Daemon, PulsarLite};
use serde_json::Value;

use crate::util::{eventually, messages_left, unique_topic, Stack, BUCKET};

/// One ingester with its own uploader (a host), told apart from the others by its node id.
struct Host {
    name: String,
    ingester: Daemon,
    uploader: Option<Daemon>,
    url: String,
}

async fn start_host(stack: &Stack, name: &str, with_uploader: bool) -> anyhow::Result<Host> {
    let mut ingester = stack.spawn_ingester_with(name, 0, &["--node-id", name])?;
    let url = format!("http://{}", ingester.wait_ready(stack.ready_timeout).await?);
    let uploader = if with_uploader {
        Some(start_uploader(stack, name, &url).await?)
    } else {
        None
    };
    Ok(Host {
        name: name.to_string(),
        ingester,
        uploader,
        url,
    })
}

async fn start_uploader(stack: &Stack, host: &str, url: &str) -> anyhow::Result<Daemon> {
    let mut uploader = stack.spawn_uploader(&format!("{host}-uploader"), url)?;
    uploader.wait_ready(stack.ready_timeout).await?;
    Ok(uploader)
}

/// Waits (flushing) until the host's rule acknowledged `expected` messages (what another
/// ingester's objects hold counts: acknowledged all the same) and spools nothing.
async fn drained(stack: &Stack, host: &Host, expected: u64) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let _ = stack.ctl(&["--ingester", &host.url, "rule", "flush", "fr"]);
        let s = rule_status(stack, &host.url, "fr")?;
        if s["messages_acked"].as_u64() >= Some(expected) && s["spooled_messages"] == 0 {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            let segments = stack.ctl_json(&["--ingester", &host.url, "segments", "fr"])?;
            anyhow::bail!(
                "{}: {s}\nsegments: {segments}\ningester log:\n{}\nuploader log:\n{}",
                host.name,
                host.ingester.log(),
                host.uploader.as_ref().map(Daemon::log).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The rule's status on one ingester (the stack's uploader may not run: exit 5 still prints it).
fn rule_status(stack: &Stack, url: &str, rule: &str) -> anyhow::Result<Value> {
    let out = stack.ctl(&["--output", "json", "--ingester", url, "status", rule]);
    anyhow::ensure!(
        matches!(out.status.code(), Some(0 | 5)) && !out.stdout.is_empty(),
        "status of {rule} on {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: Value = serde_json::from_slice(&out.stdout)?;
    Ok(status["rules"][0].clone())
}

fn create_on(
    stack: &Stack,
    url: &str,
    rule: &str,
    topic: &str,
    extra: &[&str],
) -> anyhow::Result<()> {
    let mut args = vec!["--ingester".to_string(), url.to_string()];
    args.extend(stack.create_rule_args(rule, topic, extra));
    stack.ctl_json(&args.iter().map(String::as_str).collect::<Vec<_>>())?;
    Ok(())
}

/// How many of the rule's segments on this ingester met another ingester's object at their key
/// (its history, as `tdmq-backup logs` shows it).
fn fence_conflicts(stack: &Stack, url: &str, rule: &str) -> anyhow::Result<usize> {
    let logs = stack.ctl_json(&["--ingester", url, "logs", rule, "--limit", "1000"])?;
    Ok(logs["entries"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| {
            e["message"]
                .as_str()
                .is_some_and(|m| m.contains("another ingester's"))
        })
        .count())
}

/// The conflict path, forced: two ingesters read the same messages (each on a subscription of
/// its own, cut at other sizes) and store them into one prefix. The second finds every key it
/// derives already taken and drops what the first one's objects hold; later the roles turn.
/// Every message is in exactly one object, and both spools drain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_ingesters_holding_the_same_messages_store_each_once() -> anyhow::Result<()> {
    let pulsar = PulsarLite::start_with_partitions(3).await?;
    let stack = Stack::builder().pulsar(pulsar).start().await?;
    let topic = unique_topic("fence-both");
    let full_topic = format!("persistent://public/default/{topic}");
    let messages = sample_messages(1_200, 61);
    // One message per entry, so the two ingesters' segments (40 and 70) end at different ids.
    produce(&stack.pulsar.url(), &full_topic, &messages[..600], false).await?;

    // A (the stack's own ingester and uploader) stores the first 600 alone.
    let a = stack.ingester_url();
    create_on(
        &stack,
        &a,
        "fr",
        &topic,
        &["--fence", "--window", "1h", "--max-messages", "40"],
    )?;
    stack
        .wait_until_backed_up("fr", 600, Duration::from_secs(120))
        .await?;
    let client = stack.s3.client();
    let first_objects = read_all(&client, BUCKET, "").await?;
    check_exactly_once(&first_objects, &messages[..600])?;
    assert!(
        first_objects
            .iter()
            .all(|o| o.key.ends_with(".jsonl.gz") && !o.key.contains("-ingester")),
        "fenced keys carry no spool id"
    );

    // B reads the same 600 on its own subscription, in segments of 70, with no uploader yet.
    let mut b = start_host(&stack, "b", false).await?;
    create_on(
        &stack,
        &b.url,
        "fr",
        &topic,
        &[
            "--fence",
            "--window",
            "1h",
            "--max-messages",
            "70",
            "--subscription",
            "tdmq-backup-b",
        ],
    )?;
    eventually("B spooling the first 600", Duration::from_secs(60), || {
        let s = rule_status(&stack, &b.url, "fr")?;
        Ok((s["messages_consumed"].as_u64() >= Some(600)).then_some(()))
    })
    .await?;
    // A pauses: the next 600 are B's to store first.
    stack.ctl_json(&["--ingester", &a, "rule", "pause", "fr"])?;
    produce(&stack.pulsar.url(), &full_topic, &messages[600..], false).await?;
    b.uploader = Some(start_uploader(&stack, "b", &b.url).await?);
    drained(&stack, &b, 1_200).await?;
    let objects = read_all(&client, BUCKET, "").await?;
    check_exactly_once(&objects, &messages)?;
    // B stored nothing of the first 600: A's objects are all still there, unchanged.
    for before in &first_objects {
        let now = objects
            .iter()
            .find(|o| o.key == before.key)
            .unwrap_or_else(|| panic!("{} is gone", before.key));
        assert_eq!(now.records, before.records, "{} was replaced", before.key);
    }
    assert!(
        fence_conflicts(&stack, &b.url, "fr")? > 0,
        "B met A's objects: {}",
        stack.ctl_json(&["--ingester", &b.url, "logs", "fr", "--limit", "50"])?
    );

    // A resumes: it reads the next 600 and finds B's objects at its keys.
    stack.ctl_json(&["--ingester", &a, "rule", "resume", "fr"])?;
    eventually(
        "A storing or dropping all 1200",
        Duration::from_secs(120),
        || {
            let _ = stack.ctl(&["--ingester", &a, "rule", "flush", "fr"]);
            let s = rule_status(&stack, &a, "fr")?;
            Ok(
                (s["messages_acked"].as_u64() >= Some(1_200) && s["spooled_messages"] == 0)
                    .then_some(()),
            )
        },
    )
    .await?;
    let objects = read_all(&client, BUCKET, "").await?;
    let report = check_exactly_once(&objects, &messages)?;
    println!("{report:?}");
    assert!(fence_conflicts(&stack, &a, "fr")? > 0, "A met B's objects");
    // The manifest agrees: verify finds every message once, with no gap and no overlap.
    let out = stack.ctl(&["--output", "json", "verify", "fr"]);
    let verify: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(out.status.code(), Some(0), "{verify}");
    assert_eq!(verify["messages"], 1_200, "{verify}");
    Ok(())
}

/// Three ingesters on one Failover subscription of a 6-partition topic, each with its own
/// uploader: kill -9 of a host (ingester and uploader) while producing, twice, so partitions move
/// with segments spooled and not stored; the survivor stores the rest; one dead host then comes
/// back and finds what its spool holds already stored by the others (the fence), the other is
/// gone for good. Every message is in exactly one object, and the subscription is drained.
///
/// The host comes back only once the survivor has stored everything, and the subscription is
/// checked before: pulsar-lite hands a partition to a consumer that joins without redelivering
/// what the consumer it replaces had been sent and not acknowledged (Apache Pulsar rewinds to
/// the acknowledged position), so a cumulative acknowledgement by the newcomer can pass over
/// those messages; and it moves a subscription back to an acknowledgement behind it (Apache
/// Pulsar ignores one), which the host that comes back sends for what the others stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_ingesters_killed_in_rounds_store_every_message_once() -> anyhow::Result<()> {
    let pulsar = PulsarLite::start_with_partitions(6).await?;
    let stack = Stack::builder().pulsar(pulsar).services().await?;
    let topic = unique_topic("fence-three");
    let full_topic = format!("persistent://public/default/{topic}");
    // Segments of several entries, cut by each host's own clock: the hosts' segments of one
    // partition start at the same ids but end at different ones.
    let rule_args = ["--fence", "--window", "1s", "--max-messages", "400"];
    let mut hosts = Vec::new();
    for name in ["a", "b", "c"] {
        let host = start_host(&stack, name, true).await?;
        create_on(&stack, &host.url, "f3", &topic, &rule_args)?;
        hosts.push(host);
    }
    let messages = sample_messages(4_500, 67);
    let mut killed = Vec::new();
    for round in 0..2 {
        // Half the chunk with every host whole; the victim is a host that consumed some.
        let chunk = &messages[round * 1_500..(round + 1) * 1_500];
        let before: Vec<u64> = hosts.iter().map(|h| consumed_by(&stack, h)).collect();
        produce(&stack.pulsar.url(), &full_topic, &chunk[..750], true).await?;
        let victim = eventually("a host consuming", Duration::from_secs(60), || {
            Ok(hosts
                .iter()
                .zip(&before)
                .position(|(h, &was)| consumed_by(&stack, h) > was))
        })
        .await?;
        // Its uploader dies first, so it dies with segments sealed and not stored: they are
        // redelivered to the others, and are in its spool when it comes back.
        if let Some(uploader) = hosts[victim].uploader.as_mut() {
            uploader.kill9()?;
        }
        produce(&stack.pulsar.url(), &full_topic, &chunk[750..], true).await?;
        eventually("the victim spooling", Duration::from_secs(60), || {
            let s = rule_status(&stack, &hosts[victim].url, "f3")?;
            Ok((s["spooled_messages"].as_u64() > Some(0)
                && s["sealed_segments"].as_u64() > Some(0))
            .then_some(()))
        })
        .await?;
        let mut host = hosts.remove(victim);
        host.ingester.kill9()?;
        println!("round {round}: killed {}", host.name);
        killed.push(host.name);
    }
    produce(&stack.pulsar.url(), &full_topic, &messages[3_000..], true).await?;
    let client = stack.s3.client();
    let stored = wait_all_stored(&stack, &client, &hosts, &messages).await?;
    check_exactly_once(&stored, &messages)?;
    // The survivor acknowledged all of it.
    for mut host in std::mem::take(&mut hosts) {
        host.ingester.kill9()?;
    }
    let left = messages_left(&stack, &full_topic).await?;
    assert_eq!(left, 0, "messages left unacknowledged");

    // The first host killed comes back with its spool, all of which the others stored: every
    // one of its segments meets an object at its key, and it writes none of its own.
    let back = start_host(&stack, &killed[0], true).await?;
    let spooled = rule_status(&stack, &back.url, "f3")?["spooled_messages"]
        .as_u64()
        .unwrap_or(0);
    println!(
        "{} is back with {spooled} messages spooled; {} is gone for good",
        back.name, killed[1]
    );
    assert!(spooled > 0, "it died with segments not stored");
    hosts.push(back);
    let objects = wait_all_stored(&stack, &client, &hosts, &messages).await?;
    let report = check_exactly_once(&objects, &messages)?;
    println!("{report:?}");
    let keys = |objects: &[harness::BackupObject]| {
        let mut keys: Vec<String> = objects.iter().map(|o| o.key.clone()).collect();
        keys.sort();
        keys
    };
    assert_eq!(
        keys(&objects),
        keys(&stored),
        "the host that came back wrote an object"
    );
    let conflicts: usize = hosts
        .iter()
        .map(|h| fence_conflicts_of(&stack, &h.url, "f3"))
        .sum();
    println!("segments that met another ingester's object: {conflicts}");
    Ok(())
}

fn consumed_by(stack: &Stack, host: &Host) -> u64 {
    rule_status(stack, &host.url, "f3")
        .ok()
        .and_then(|s| s["messages_consumed"].as_u64())
        .unwrap_or(0)
}

fn fence_conflicts_of(stack: &Stack, url: &str, rule: &str) -> usize {
    fence_conflicts(stack, url, rule).unwrap_or(0)
}

/// Waits (flushing) until every message is in the store and the hosts spool nothing; returns
/// the objects.
async fn wait_all_stored(
    stack: &Stack,
    client: &aws_sdk_s3::Client,
    hosts: &[Host],
    messages: &[harness::SampleMessage],
) -> anyhow::Result<Vec<harness::BackupObject>> {
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    loop {
        for host in hosts {
            let _ = stack.ctl(&["--ingester", &host.url, "rule", "flush", "f3"]);
        }
        // An object may be read while its upload is being completed: read again.
        if let Ok(objects) = read_all(client, BUCKET, "").await {
            let stored: usize = objects.iter().map(|o| o.records.len()).sum();
            let spooled: u64 = hosts
                .iter()
                .map(|h| {
                    rule_status(stack, &h.url, "f3")
                        .ok()
                        .and_then(|s| s["spooled_messages"].as_u64())
                        .unwrap_or(u64::MAX)
                })
                .fold(0, u64::saturating_add);
            if stored >= messages.len() && spooled == 0 {
                return Ok(objects);
            }
            if std::time::Instant::now() > deadline {
                let report = check_exactly_once(&objects, messages).err();
                anyhow::bail!(
                    "{stored} of {} records stored, {spooled} spooled; {report:?}\n{}",
                    messages.len(),
                    hosts
                        .iter()
                        .map(|h| format!("{}:\n{}", h.name, h.ingester.log()))
                        .collect::<Vec<_>>()
                        .join("\n----\n")
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
}
