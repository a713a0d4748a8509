//! Resumable multipart uploads through the whole stack: the uploader talks to the S3 server
//! through a [`FaultProxy`] (so the bytes it sends are counted), is killed in the middle of a
//! ~30 MB multipart upload, and on restart resumes the same upload instead of starting over.
//! Also: the fault proxy itself in front of s3s-fs.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use harness::{check_exactly_once, read_all, FaultMode, FaultProxy};
use harness::{produce, S3Server, SampleMessage};
use rand::{Rng, SeedableRng};

use crate::util::{unique_topic, Extra, Stack, BUCKET};

const PART: u64 = 5 << 20;
/// ~40 MB in all. (100 KB messages would match the example better, but pulsar-lite
/// behind the relay stalls delivering a few hundred of them; 10 KB ones flow.)
const MESSAGES: usize = 4_000;
const PAYLOAD_BYTES: usize = 10_000;

/// Messages of random ASCII (so gzip cannot shrink the segment to nothing), each unique.
fn big_messages(seed: u64) -> Vec<SampleMessage> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..MESSAGES)
        .map(|i| {
            let mut payload = format!("msg-{i:05}-").into_bytes();
            payload.extend((payload.len()..PAYLOAD_BYTES).map(|_| ALPHABET[rng.gen_range(0..64)]));
            SampleMessage {
                payload,
                key: None,
                properties: BTreeMap::new(),
                event_time: None,
                ..Default::default()
            }
        })
        .collect()
}

/// Starts the uploader against `endpoint` (the fault proxy) with 5 MiB parts, plus `envs`.
async fn start_uploader(
    stack: &mut Stack,
    endpoint: &str,
    envs: &[(&str, &str)],
) -> anyhow::Result<()> {
    stack.store_endpoint = Some(endpoint.to_string());
    stack.uploader_extra = Extra {
        args: [
            "--part-size",
            "5MiB",
            "--multipart-threshold",
            "5MiB",
            "--max-backoff",
            "2s",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
        env: envs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    };
    stack.start_uploader().await
}

/// Broker, S3, ingester; a rule holding the whole topic in one segment; ~40 MB produced and
/// spooled; the proxy in front of S3. The segment is not sealed yet.
async fn big_segment_stack(
    rule: &str,
    seed: u64,
) -> anyhow::Result<(Stack, FaultProxy, Vec<SampleMessage>)> {
    let mut stack = Stack::services().await?;
    stack.start_ingester().await?;
    let proxy = FaultProxy::start(stack.s3.addr())?;
    let topic = unique_topic(rule);
    let messages = big_messages(seed);
    produce(
        &stack.pulsar.url(),
        &format!("persistent://public/default/{topic}"),
        &messages,
        true,
    )
    .await?;
    stack.create_rule(
        rule,
        &topic,
        &[
            "--start",
            "earliest",
            "--window",
            "1h",
            "--max-messages",
            "100000",
            "--max-bytes",
            "60MB",
        ],
    )?;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let status = stack.rule_status(rule)?;
        if status["spooled_messages"].as_u64().unwrap_or(0) >= MESSAGES as u64 {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "not everything spooled: {status}\n--- ingester log tail:\n{}",
                stack.log_tail("ingester.log")
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Ok((stack, proxy, messages))
}

/// s3s-fs keeps an open multipart upload as `.upload-ID.json` (+ `.upload_id-ID.part-N`) in its
/// root; it does not implement ListMultipartUploads.
fn open_multipart_uploads(s3_root: &Path) -> Vec<String> {
    std::fs::read_dir(s3_root)
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(".upload-") || n.starts_with(".upload_id-"))
                .collect()
        })
        .unwrap_or_default()
}

fn state_files(stack: &Stack) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(stack.path("uploader").join("multipart"))
        .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default()
}

/// After the restart: one object holding every message once, no upload left open, no state.
async fn check_one_complete_object(
    stack: &Stack,
    rule: &str,
    messages: &[SampleMessage],
) -> anyhow::Result<u64> {
    stack
        .wait_until_backed_up(rule, messages.len() as u64, Duration::from_secs(300))
        .await?;
    let objects = read_all(&stack.s3.client(), BUCKET, "").await?;
    let report = check_exactly_once(&objects, messages)?;
    assert_eq!(report.objects, 1, "{report:?}");
    let size = objects[0].content_length;
    assert!(size > 4 * PART, "a multipart-sized object: {size}");
    let open = open_multipart_uploads(stack.s3.data_dir());
    assert!(open.is_empty(), "multipart uploads left open: {open:?}");
    assert!(state_files(stack).is_empty(), "{:?}", state_files(stack));
    Ok(size)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_after_three_parts_resumes_without_resending_them() -> anyhow::Result<()> {
    let rule = "big-resume";
    let (mut stack, proxy, messages) = big_segment_stack(rule, 11).await?;
    let endpoint = proxy.endpoint();
    start_uploader(
        &mut stack,
        &endpoint,
        &[(proto::failpoint::ENV, "uploader:after_part@3")],
    )
    .await?;
    stack.ctl_json(&["rule", "flush", rule])?;

    let uploader = stack.uploader.as_mut().context("uploader")?;
    let status = uploader
        .wait_timeout_async(Duration::from_secs(180))
        .await?
        .with_context(|| {
            format!(
                "the failpoint never fired:\n{}",
                stack.log_tail("uploader.log")
            )
        })?;
    let log = stack.log_tail("uploader.log");
    assert!(
        log.contains("failpoint uploader:after_part reached"),
        "the uploader exited ({status}) without reaching its failpoint:\n{log}"
    );
    let state = state_files(&stack);
    assert_eq!(state.len(), 1, "{state:?}");
    let record: serde_json::Value = serde_json::from_slice(&std::fs::read(&state[0])?)?;
    assert_eq!(
        record["parts"].as_array().map(Vec::len),
        Some(3),
        "{record}"
    );
    // An S3 endpoint that is not COS: the parts went up with x-amz-checksum-crc32c, and the
    // record keeps each part's CRC32C for CompleteMultipartUpload.
    assert!(
        record["parts"][2]["checksum_crc32c"].is_string(),
        "{record}"
    );
    let sent_before = proxy.bytes_to_upstream();
    assert!(sent_before >= 3 * PART, "{sent_before}");

    proxy.reset_counters();
    start_uploader(&mut stack, &endpoint, &[]).await?;
    let size = check_one_complete_object(&stack, rule, &messages).await?;
    let sent_after = proxy.bytes_to_upstream();
    println!("object {size} bytes; sent before the kill {sent_before}, after {sent_after}");
    assert!(
        sent_after < size - 2 * PART,
        "parts 1-3 were sent again: {sent_after} bytes after the restart for a {size}-byte object"
    );
    assert!(
        sent_after >= size - 3 * PART,
        "the rest was sent: {sent_after} of {size}"
    );
    let log = stack.log_tail("uploader.log");
    assert!(
        std::fs::read_to_string(stack.path("uploader.log"))?
            .contains("resuming the multipart upload"),
        "{log}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_at_a_random_moment_of_a_big_upload_still_stores_one_object() -> anyhow::Result<()> {
    let rule = "big-kill";
    let (mut stack, proxy, messages) = big_segment_stack(rule, 12).await?;
    let endpoint = proxy.endpoint();
    // Content-MD5, as against COS (the failpoint test above covers the CRC32C parts), and the
    // segment streamed over ReadSegment, as between two hosts (the test above reads it from
    // the ingester's disk): the kill can then also cut the ingester's stream mid-part.
    let md5 = [
        ("TDMQ_BACKUP_UPLOADER_REQUEST_CHECKSUM", "md5"),
        ("TDMQ_BACKUP_UPLOADER_READ_LOCAL", "false"),
    ];
    start_uploader(&mut stack, &endpoint, &md5).await?;
    stack.ctl_json(&["rule", "flush", rule])?;

    // Somewhere between the first part and the end of the last one (~30 MB in all).
    let kill_at = rand::thread_rng().gen_range(1u64 << 20..24 << 20);
    let deadline = Instant::now() + Duration::from_secs(180);
    while proxy.bytes_to_upstream() < kill_at {
        if Instant::now() > deadline {
            bail!(
                "only {} bytes uploaded:\n{}",
                proxy.bytes_to_upstream(),
                stack.log_tail("uploader.log")
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let uploader = stack.uploader.as_mut().context("uploader")?;
    uploader.kill9()?;
    println!(
        "killed after {} bytes (aimed at {kill_at}); state files: {:?}",
        proxy.bytes_to_upstream(),
        state_files(&stack)
    );

    start_uploader(&mut stack, &endpoint, &md5).await?;
    check_one_complete_object(&stack, rule, &messages).await?;
    assert!(
        std::fs::read_to_string(stack.path("uploader.log"))?
            .contains("Content-MD5 request checksums"),
        "{}",
        stack.log_tail("uploader.log")
    );
    let sources =
        harness::stored_segment_sources(&std::fs::read_to_string(stack.path("uploader.log"))?);
    assert_eq!(sources, ["ingester"], "read over ReadSegment");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_proxy_counts_bytes_and_injects_errors_in_front_of_s3() -> anyhow::Result<()> {
    let s3 = S3Server::start().await?;
    s3.create_bucket("proxy-bucket").await?;
    let proxy = FaultProxy::start(s3.addr())?;
    let client = harness::s3::client_for(&proxy.endpoint(), s3.access_key(), s3.secret_key());
    let body = vec![b'x'; 100_000];
    client
        .put_object()
        .bucket("proxy-bucket")
        .key("a")
        .body(body.clone().into())
        .send()
        .await?;
    assert!(
        proxy.bytes_to_upstream() > 100_000,
        "{}",
        proxy.bytes_to_upstream()
    );
    assert!(proxy.bytes_from_upstream() > 0);
    assert!(proxy.connections() >= 1);

    for mode in [
        FaultMode::Http503,
        FaultMode::Http500,
        FaultMode::Refuse,
        FaultMode::DropAfterBytes(1000),
    ] {
        proxy.set_mode(mode);
        proxy.reset_counters();
        let result = client
            .put_object()
            .bucket("proxy-bucket")
            .key("b")
            .body(body.clone().into())
            .send()
            .await;
        assert!(result.is_err(), "{mode:?} must fail the request");
        if matches!(mode, FaultMode::Http503 | FaultMode::Http500) {
            let text = format!("{:?}", result.err());
            let code = if mode == FaultMode::Http503 {
                "503"
            } else {
                "500"
            };
            assert!(text.contains(code), "{mode:?}: {text}");
            assert_eq!(proxy.bytes_to_upstream(), 0, "nothing forwarded");
        }
        assert!(
            proxy.connections() >= 1,
            "the SDK retried through the proxy"
        );
    }
    assert!(s3
        .client()
        .head_object()
        .bucket("proxy-bucket")
        .key("b")
        .send()
        .await
        .is_err());

    proxy.set_mode(FaultMode::Delay(Duration::from_millis(200)));
    let started = Instant::now();
    client
        .get_object()
        .bucket("proxy-bucket")
        .key("a")
        .send()
        .await?;
    assert!(started.elapsed() >= Duration::from_millis(200));
    proxy.set_mode(FaultMode::Pass);
    let got = client
        .get_object()
        .bucket("proxy-bucket")
        .key("a")
        .send()
        .await?
        .body
        .collect()
        .await?
        .into_bytes();
    assert_eq!(got.len(), body.len());
    Ok(())
}
