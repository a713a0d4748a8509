//! The control plane and the uploader's reach: a daemon reachable beyond loopback needs a token,
//! a commit must name the object the ingester sealed, and a rule cannot send the uploader's
//! signed writes wherever it likes.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use harness::{produce, sample_messages, Daemon};
use proto::v1;
use tonic::transport::Endpoint;

use crate::util::{eventually, unique_topic, Stack};

/// Waits until `daemon`'s log holds `line` (it is up) or it exits (then fails with the log).
async fn wait_for_log_line(daemon: &mut Daemon, line: &str) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if harness::daemon_log::strip_ansi(&daemon.log()).contains(line) {
            return Ok(());
        }
        if let Some(status) = daemon.try_status()? {
            bail!(
                "{} exited ({status}) before logging {line:?}:\n{}",
                daemon.name(),
                daemon.log()
            );
        }
        if tokio::time::Instant::now() > deadline {
            bail!("{} never logged {line:?}:\n{}", daemon.name(), daemon.log());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits for `daemon` to exit; fails if it is still running after 30 s or exits with 0.
async fn expect_refusal(daemon: &mut Daemon) -> anyhow::Result<String> {
    let Some(status) = daemon.wait_timeout_async(Duration::from_secs(30)).await? else {
        bail!(
            "{} is still running; it should have refused to start:\n{}",
            daemon.name(),
            daemon.log()
        );
    };
    let log = daemon.log();
    if status.success() {
        bail!(
            "{} exited 0; a refusal must be non-zero:\n{log}",
            daemon.name()
        );
    }
    Ok(log)
}

fn ingester_args(dir: &Path, extra: &[&str]) -> Vec<String> {
    let mut args = vec![
        "--data-dir".to_string(),
        dir.join("ingester").to_string_lossy().into_owned(),
        "--listen".into(),
        "0.0.0.0:0".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn uploader_args(dir: &Path, extra: &[&str]) -> Vec<String> {
    let mut args = vec![
        "--ingester".to_string(),
        "http://127.0.0.1:9".into(),
        "--state-dir".into(),
        dir.join("uploader").to_string_lossy().into_owned(),
        "--endpoint".into(),
        format!("file://{}", dir.join("store").display()),
        "--listen".into(),
        "0.0.0.0:0".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn assert_warns_about_mode(log: &str, token_file: &str) {
    let log = harness::daemon_log::strip_ansi(log);
    assert!(
        log.lines().any(|l| l.contains("WARN")
            && l.contains(token_file)
            && l.contains("readable")
            && l.contains("644")),
        "no warning about a token file others can read:\n{log}"
    );
    assert!(!log.contains("ctl-token-beyond-loopback"), "{log}");
}

fn assert_names_the_keys(what: &str, log: &str) {
    for key in ["auth_token_file", "allow_unauthenticated", "0.0.0.0"] {
        assert!(
            log.contains(key),
            "{what}'s refusal does not name {key}:\n{log}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_listening_beyond_loopback_needs_a_token_or_an_explicit_opt_out(
) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let token = dir.path().join("control.token");
    std::fs::write(&token, "ctl-token-beyond-loopback\n")?;
    // Readable by everyone on the host: the daemons start, and say so.
    std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
    let token = token.to_string_lossy().into_owned();
    let env = vec![("RUST_LOG".to_string(), "info".to_string())];

    // No token, no opt-out: both refuse, naming the two keys that would let them start.
    let mut ingester = Daemon::spawn(
        "tdmq-backup-ingester",
        &ingester_args(dir.path(), &[]),
        &env,
        dir.path().join("ingester-refused.log"),
    )?;
    let log = expect_refusal(&mut ingester).await?;
    assert_names_the_keys("the ingester", &log);
    let mut uploader = Daemon::spawn(
        "tdmq-backup-uploader",
        &uploader_args(dir.path(), &[]),
        &env,
        dir.path().join("uploader-refused.log"),
    )?;
    let log = expect_refusal(&mut uploader).await?;
    assert_names_the_keys("the uploader", &log);

    // A token file: they start.
    let mut ingester = Daemon::spawn(
        "tdmq-backup-ingester",
        &ingester_args(dir.path(), &["--auth-token-file", &token]),
        &env,
        dir.path().join("ingester-token.log"),
    )?;
    wait_for_log_line(&mut ingester, "ingester ready").await?;
    assert_warns_about_mode(&ingester.log(), &token);
    drop(ingester);
    let mut uploader = Daemon::spawn(
        "tdmq-backup-uploader",
        &uploader_args(dir.path(), &["--auth-token-file", &token]),
        &env,
        dir.path().join("uploader-token.log"),
    )?;
    wait_for_log_line(&mut uploader, "uploader ready").await?;
    assert_warns_about_mode(&uploader.log(), &token);
    drop(uploader);

    // The explicit opt-out, as a flag for one and as an environment variable for the other:
    // they start and say that they are open.
    let mut ingester = Daemon::spawn(
        "tdmq-backup-ingester",
        &ingester_args(dir.path(), &["--allow-unauthenticated"]),
        &env,
        dir.path().join("ingester-open.log"),
    )?;
    wait_for_log_line(&mut ingester, "ingester ready").await?;
    assert!(
        ingester.log().contains("allow_unauthenticated"),
        "{}",
        ingester.log()
    );
    drop(ingester);
    let mut env_open = env.clone();
    env_open.push((
        "TDMQ_BACKUP_UPLOADER_ALLOW_UNAUTHENTICATED".into(),
        "true".into(),
    ));
    let mut uploader = Daemon::spawn(
        "tdmq-backup-uploader",
        &uploader_args(dir.path(), &[]),
        &env_open,
        dir.path().join("uploader-open.log"),
    )?;
    wait_for_log_line(&mut uploader, "uploader ready").await?;
    assert!(
        uploader.log().contains("allow_unauthenticated"),
        "{}",
        uploader.log()
    );
    Ok(())
}

/// The first sealed segment of `rule`, flushing until there is one.
async fn first_sealed(
    stack: &Stack,
    client: &mut proto::IngesterClient<tonic::transport::Channel>,
    rule: &str,
) -> anyhow::Result<v1::SegmentInfo> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let sealed = client
            .list_sealed(v1::ListSealedRequest {
                max: 10,
                wait_ms: 500,
            })
            .await?
            .into_inner()
            .segments;
        if let Some(seg) = sealed.into_iter().find(|s| s.rule == rule) {
            return Ok(seg);
        }
        if tokio::time::Instant::now() > deadline {
            bail!(
                "no sealed segment of {rule}:\n{}",
                stack.log_tail("ingester.log")
            );
        }
        let _ = stack.ctl(&["rule", "flush", rule]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_must_name_the_sealed_object_key_size_and_checksum() -> anyhow::Result<()> {
    // No uploader: this test is the uploader, over the real gRPC API.
    let mut stack = Stack::services().await?;
    stack.start_ingester().await?;
    let topic = unique_topic("commit-check");
    let full_topic = format!("persistent://public/default/{topic}");
    stack.create_rule("commit-bk", &topic, &["--window", "1h"])?;
    let messages = sample_messages(40, 3);
    produce(&stack.pulsar.url(), &full_topic, &messages, false).await?;
    let channel = Endpoint::from_shared(stack.ingester_url())?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await?;
    let mut client = proto::IngesterClient::new(channel);
    let seg = first_sealed(&stack, &mut client, "commit-bk").await?;

    let commit = |object_key: &str| v1::CommitSegmentRequest {
        rule: seg.rule.clone(),
        segment_no: seg.segment_no,
        object_key: object_key.to_string(),
        etag: "\"etag\"".into(),
        upload_ms: 1,
        attempts: 1,
        file_bytes: seg.file_bytes,
        content_crc32c: seg.content_crc32c.clone(),
        covered_through: String::new(),
    };
    // Nothing was stored: a commit that names no object must not free the segment.
    let status = client
        .commit_segment(commit(""))
        .await
        .expect_err("a commit without an object key is refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("object_key"), "{status:?}");
    let status = client
        .commit_segment(commit("elsewhere/x.jsonl.gz"))
        .await
        .expect_err("another key is refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("object_key"), "{status:?}");
    let status = client
        .commit_segment(v1::CommitSegmentRequest {
            file_bytes: seg.file_bytes + 1,
            ..commit(&seg.object_key)
        })
        .await
        .expect_err("another size is refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("file_bytes"), "{status:?}");
    let status = client
        .commit_segment(v1::CommitSegmentRequest {
            content_crc32c: String::new(),
            ..commit(&seg.object_key)
        })
        .await
        .expect_err("a commit without a checksum is refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("content_crc32c"), "{status:?}");
    let status = client
        .commit_segment(v1::CommitSegmentRequest {
            content_crc32c: "00000000".into(),
            ..commit(&seg.object_key)
        })
        .await
        .expect_err("another checksum is refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("content_crc32c"), "{status:?}");

    // Still sealed, nothing acknowledged.
    let rule = stack.rule_status("commit-bk")?;
    assert_eq!(rule["messages_acked"], 0, "{rule}");
    assert_eq!(rule["sealed_segments"], 1, "{rule}");

    let outcome = client
        .commit_segment(commit(&seg.object_key))
        .await?
        .into_inner()
        .outcome;
    assert_eq!(outcome, "committed");
    eventually(
        "the committed segment to be acknowledged",
        Duration::from_secs(60),
        || {
            let rule = stack.rule_status("commit-bk")?;
            Ok((rule["messages_acked"].as_u64() == Some(seg.messages)).then_some(()))
        },
    )
    .await?;
    Ok(())
}

/// The `upload_failed` entries of `rule`'s history.
fn upload_failures(stack: &Stack, rule: &str) -> anyhow::Result<Vec<String>> {
    let logs = stack.ctl_json(&["logs", rule, "--failed", "--limit", "100"])?;
    Ok(logs["entries"]
        .as_array()
        .with_context(|| format!("no entries: {logs}"))?
        .iter()
        .filter(|e| e["kind"] == "upload_failed")
        .map(|e| e["message"].as_str().unwrap_or_default().to_string())
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_endpoint_is_used_only_when_the_uploader_allows_it_and_never_file(
) -> anyhow::Result<()> {
    let mut stack = Stack::services().await?;
    stack.uploader_without_endpoint = true;
    stack.start_ingester().await?;
    stack.start_uploader().await?;
    let s3_endpoint = stack.s3.endpoint();
    let elsewhere = stack.path("somewhere-on-the-uploader-host");
    let file_endpoint = format!("file://{}", elsewhere.display());

    let topic = unique_topic("endpoints");
    let full_topic = format!("persistent://public/default/{topic}");
    // create_rule names the S3 server as the rule's endpoint.
    stack.create_rule("s3-rule", &topic, &["--subscription", "s3-sub"])?;
    stack.create_rule(
        "file-rule",
        &topic,
        &["--subscription", "file-sub", "--endpoint", &file_endpoint],
    )?;
    let messages = sample_messages(30, 5);
    produce(&stack.pulsar.url(), &full_topic, &messages, false).await?;

    // Neither endpoint is the uploader's to use: both rules report why, naming the key.
    for (rule, says) in [("s3-rule", "allowed_endpoints"), ("file-rule", "file://")] {
        let failures = eventually(
            &format!("{rule}'s refused endpoint in its history"),
            Duration::from_secs(90),
            || {
                let _ = stack.ctl(&["rule", "flush", rule]);
                let failures = upload_failures(&stack, rule)?;
                Ok((!failures.is_empty()).then_some(failures))
            },
        )
        .await
        .with_context(|| stack.log_tail("uploader.log"))?;
        assert!(
            failures.iter().all(|f| f.contains(says)),
            "{rule}: {failures:?}"
        );
        let status = stack.rule_status(rule)?;
        assert_eq!(status["messages_acked"], 0, "{status}");
        assert!(
            status["last_error"]
                .as_str()
                .unwrap_or_default()
                .contains(says),
            "{status}"
        );
    }
    assert!(
        harness::read_all(&stack.s3.client(), crate::util::BUCKET, "")
            .await?
            .is_empty(),
        "nothing may be written to a rule endpoint the uploader does not allow"
    );
    assert!(
        !elsewhere.exists(),
        "a rule made the uploader write to {file_endpoint}"
    );

    // Listed in allowed_endpoints, the S3 rule's endpoint is used; file:// still never is.
    stack.uploader.take();
    // With ingester_data_dir naming the ingester's data_dir, sealed files are still read here.
    stack.uploader_extra.args = vec![
        "--allowed-endpoints".into(),
        s3_endpoint.clone(),
        "--ingester-data-dir".into(),
        stack.path("ingester").to_string_lossy().into_owned(),
    ];
    stack.start_uploader().await?;
    stack
        .wait_until_stored("s3-rule", &messages, Duration::from_secs(120))
        .await?;
    let sources =
        harness::stored_segment_sources(&std::fs::read_to_string(stack.path("uploader.log"))?);
    assert!(
        sources.iter().any(|s| s == "local_file"),
        "sealed files under ingester_data_dir were not read locally: {sources:?}"
    );
    let before = upload_failures(&stack, "file-rule")?.len();
    eventually(
        "another refusal of the file:// endpoint",
        Duration::from_secs(90),
        || {
            let _ = stack.ctl(&["rule", "flush", "file-rule"]);
            Ok((upload_failures(&stack, "file-rule")?.len() > before).then_some(()))
        },
    )
    .await?;
    assert!(
        !elsewhere.exists(),
        "a rule made the uploader write to {file_endpoint}"
    );
    let status = stack.rule_status("file-rule")?;
    assert_eq!(status["messages_acked"], 0, "{status}");

    // A file:// entry in the list is a configuration error, naming the key.
    stack.uploader.take();
    let mut uploader = Daemon::spawn(
        "tdmq-backup-uploader",
        &[
            "--ingester".to_string(),
            stack.ingester_url(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--state-dir".into(),
            stack.path("uploader").to_string_lossy().into_owned(),
            "--allowed-endpoints".into(),
            format!("{s3_endpoint},{file_endpoint}"),
        ],
        &[],
        stack.path("uploader-file-listed.log"),
    )?;
    let log = expect_refusal(&mut uploader).await?;
    assert!(
        log.contains("allowed_endpoints") && log.contains("file://"),
        "{log}"
    );
    Ok(())
}

/// An address no packet reaches (TEST-NET-1): what a token is sent to does not need to answer
/// for the warning to be due.
const FAR_INGESTER: &str = "http://192.0.2.1:7601";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_sent_over_plain_http_beyond_loopback_is_warned_about() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let control = dir.path().join("control.token");
    std::fs::write(&control, "ctl-tok-clear-7Hq-never-shown\n")?;
    let control = control.to_string_lossy().into_owned();
    let pulsar = dir.path().join("pulsar.token");
    std::fs::write(&pulsar, "pulsar-tok-clear-3Xa-never-shown\n")?;
    let pulsar = pulsar.to_string_lossy().into_owned();
    let text = |out: &std::process::Output| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };

    // ctl: the control-plane token to a far ingester over http://.
    let out = harness::ctl(&[
        "--ingester",
        FAR_INGESTER,
        "--uploader",
        "http://127.0.0.1:9",
        "--token-file",
        &control,
        "rule",
        "list",
    ]);
    let said = text(&out);
    assert!(
        said.contains("warning") && said.contains("unencrypted") && said.contains(FAR_INGESTER),
        "{said}"
    );
    assert!(!said.contains("never-shown"), "{said}");
    // ctl: a rule's Pulsar token, even without a control-plane token.
    let out = harness::ctl(&[
        "--ingester",
        FAR_INGESTER,
        "rule",
        "create",
        "far-rule",
        "--service-url",
        "pulsar://127.0.0.1:6650",
        "--topic",
        "orders",
        "--subscription",
        "s",
        "--bucket",
        "b-1",
        "--region",
        "ap-guangzhou",
        "--token-file",
        &pulsar,
    ]);
    let said = text(&out);
    assert!(
        said.contains("warning") && said.contains("Pulsar token") && said.contains(FAR_INGESTER),
        "{said}"
    );
    assert!(!said.contains("never-shown"), "{said}");
    // Loopback, or no token: nothing to warn about.
    for args in [
        vec!["--ingester", "http://127.0.0.1:9", "--token-file", &control],
        vec!["--ingester", FAR_INGESTER],
    ] {
        let mut full = args.clone();
        full.extend(["--uploader", "http://127.0.0.1:9", "rule", "list"]);
        let said = text(&harness::ctl(&full));
        assert!(!said.contains("warning"), "{full:?}: {said}");
    }

    // The uploader: its control-plane token to a far ingester over http://.
    let mut uploader = Daemon::spawn(
        "tdmq-backup-uploader",
        &[
            "--ingester".to_string(),
            FAR_INGESTER.into(),
            "--auth-token-file".into(),
            control.clone(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--state-dir".into(),
            dir.path().join("uploader").to_string_lossy().into_owned(),
            "--endpoint".into(),
            format!("file://{}", dir.path().join("store").display()),
        ],
        &[("RUST_LOG".to_string(), "info".to_string())],
        dir.path().join("uploader.log"),
    )?;
    wait_for_log_line(&mut uploader, "uploader ready").await?;
    let log = harness::daemon_log::strip_ansi(&uploader.log());
    assert!(
        log.lines()
            .any(|l| l.contains("WARN") && l.contains("unencrypted") && l.contains(FAR_INGESTER)),
        "{log}"
    );
    assert!(!log.contains("never-shown"), "{log}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_token_cannot_commit_and_an_uploader_token_cannot_change_rules(
) -> anyhow::Result<()> {
    let mut stack = Stack::services().await?;
    let operator = stack.path("operator.token");
    std::fs::write(&operator, "operator-tok-5Rr\n")?;
    let uploader = stack.path("uploader.token");
    std::fs::write(&uploader, "uploader-tok-8Kk\n")?;
    for file in [&operator, &uploader] {
        std::fs::set_permissions(file, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    }
    let operator_s = operator.to_string_lossy().into_owned();
    let uploader_s = uploader.to_string_lossy().into_owned();
    stack.ingester_extra.args = vec![
        "--auth-token-file".into(),
        operator_s.clone(),
        "--uploader-token-file".into(),
        uploader_s.clone(),
    ];
    // The uploader's own status service keeps the operator's token (ctl calls it); what it
    // sends to the ingester is the uploader token.
    stack.uploader_extra.args = vec![
        "--auth-token-file".into(),
        operator_s.clone(),
        "--ingester-token-file".into(),
        uploader_s,
    ];
    stack.ctl_token_file = Some(operator.clone());
    stack.start_ingester().await?;
    stack.start_uploader().await?;

    // The whole path works with the two tokens.
    let topic = unique_topic("split-tokens");
    let full_topic = format!("persistent://public/default/{topic}");
    stack.create_rule("split-bk", &topic, &[])?;
    let messages = sample_messages(50, 9);
    produce(&stack.pulsar.url(), &full_topic, &messages, false).await?;
    stack
        .wait_until_stored("split-bk", &messages, Duration::from_secs(120))
        .await?;

    let channel = Endpoint::from_shared(stack.ingester_url())?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await?;
    let with = |token: &str| -> anyhow::Result<_> {
        Ok(proto::IngesterClient::with_interceptor(
            channel.clone(),
            proto::auth::SendToken::new(Some(&proto::types::Secret::new(token)))?,
        ))
    };
    // The operator's token cannot commit (nor list or read segments).
    let mut as_operator = with("operator-tok-5Rr")?;
    let status = as_operator
        .commit_segment(v1::CommitSegmentRequest {
            rule: "split-bk".into(),
            segment_no: 0,
            ..v1::CommitSegmentRequest::default()
        })
        .await
        .expect_err("an operator token cannot commit");
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    let status = as_operator
        .list_sealed(v1::ListSealedRequest { max: 1, wait_ms: 0 })
        .await
        .expect_err("an operator token cannot list segments for upload");
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    assert!(as_operator
        .list_rules(v1::ListRulesRequest {})
        .await
        .is_ok());
    // The uploader's token cannot touch rules.
    let mut as_uploader = with("uploader-tok-8Kk")?;
    let status = as_uploader
        .delete_rule(v1::DeleteRuleRequest {
            name: "split-bk".into(),
            discard: true,
            ..v1::DeleteRuleRequest::default()
        })
        .await
        .expect_err("an uploader token cannot delete a rule");
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    let status = as_uploader
        .list_rules(v1::ListRulesRequest {})
        .await
        .expect_err("nor list rules");
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    assert!(as_uploader
        .list_sealed(v1::ListSealedRequest { max: 1, wait_ms: 0 })
        .await
        .is_ok());
    Ok(())
}
