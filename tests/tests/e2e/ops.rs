//! Operating the daemons: the control-plane token on every gRPC call, the Prometheus
//! `/metrics` endpoints, and secrets (the Pulsar token, the control-plane token) kept out of
//! every reply, log line and error.

use std::time::Duration;

use anyhow::Context;
use harness::{http, produce, sample_messages};
use proto::auth::{SendToken, UNAUTHENTICATED};
use proto::types::Secret;
use proto::v1;
use tonic::transport::Endpoint;

use crate::util::{unique_topic, Extra, Stack};

const PULSAR_TOKEN: &str = "pulsar-role-tok-7Qx2-never-shown";
const CONTROL_TOKEN: &str = "ctl-plane-tok-9Zk4-never-shown";
const RULE: &str = "ops-bk";
const MESSAGES: usize = 300;

fn channel_endpoint(url: &str) -> anyhow::Result<Endpoint> {
    Ok(Endpoint::from_shared(url.to_string())?.connect_timeout(Duration::from_secs(5)))
}

fn send_token(token: Option<&str>) -> anyhow::Result<SendToken> {
    Ok(SendToken::new(token.map(Secret::new).as_ref())?)
}

fn assert_refused(result: Result<impl std::fmt::Debug, tonic::Status>, sent: &str) {
    let status = result.expect_err("the call must be refused");
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    assert_eq!(status.message(), UNAUTHENTICATED);
    if !sent.is_empty() {
        assert!(!format!("{status:?}").contains(sent), "{status:?}");
    }
}

fn out_text(out: &std::process::Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn assert_no_secret(what: &str, text: &str) {
    for secret in [PULSAR_TOKEN, CONTROL_TOKEN] {
        assert!(!text.contains(secret), "{what} shows a secret:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_token_is_required_metrics_count_and_no_secret_is_ever_shown(
) -> anyhow::Result<()> {
    let mut stack = Stack::services().await?;
    let control = stack.path("control.token");
    std::fs::write(&control, format!("{CONTROL_TOKEN}\n"))?;
    let control_s = control.to_string_lossy().into_owned();
    // Debug logs: the strictest place to look for a leaked token.
    let debug = (
        "RUST_LOG".to_string(),
        "debug,h2=info,hyper=info,hyper_util=info,tower=info,sled=info".to_string(),
    );
    stack.ingester_extra = Extra {
        args: vec![
            "--auth-token-file".into(),
            control_s.clone(),
            "--metrics-listen".into(),
            "127.0.0.1:0".into(),
        ],
        env: vec![debug.clone()],
    };
    stack.uploader_extra = Extra {
        args: vec![
            "--auth-token-file".into(),
            control_s.clone(),
            "--metrics-listen".into(),
            "127.0.0.1:0".into(),
        ],
        env: vec![debug],
    };
    stack.start_ingester().await?;
    stack.start_uploader().await?;
    // Both on port 0: where they serve /metrics is in their logs.
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
    let mut ctl_outputs = String::new();

    // 1. ctl without the token: refused, non-zero, says why.
    let (ingester_url, uploader_url) = (stack.ingester_url(), stack.uploader_url());
    let daemons = [
        "--ingester",
        ingester_url.as_str(),
        "--uploader",
        uploader_url.as_str(),
    ];
    let mut args = daemons.to_vec();
    args.extend(["rule", "list"]);
    let out = harness::ctl(&args);
    ctl_outputs.push_str(&out_text(&out));
    assert!(!out.status.success(), "{}", out_text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unauthenticated"), "{stderr}");
    // A wrong token file: refused the same way.
    let wrong = stack.path("wrong.token");
    std::fs::write(&wrong, "ctl-plane-tok-9Zk4-never-showX\n")?;
    let wrong_s = wrong.to_string_lossy().into_owned();
    let mut args = daemons.to_vec();
    args.extend([
        "--token-file",
        wrong_s.as_str(),
        "--output",
        "json",
        "status",
    ]);
    let out = harness::ctl(&args);
    ctl_outputs.push_str(&out_text(&out));
    assert!(!out.status.success(), "{}", out_text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unauthenticated"));
    assert!(!out_text(&out).contains("never-showX"));

    // 2. With the token: a rule, a backup end to end (the uploader authenticates too).
    stack.ctl_token_file = Some(control.clone());
    let pulsar_token = stack.path("pulsar.token");
    std::fs::write(&pulsar_token, format!("{PULSAR_TOKEN}\n"))?;
    let topic = unique_topic("ops");
    let full_topic = format!("persistent://public/default/{topic}");
    let pulsar_token_s = pulsar_token.to_string_lossy().into_owned();
    let rule = stack.create_rule(
        RULE,
        &topic,
        &[
            "--window",
            "1h",
            "--max-messages",
            "100",
            "--role",
            "backup-role",
            "--token-file",
            &pulsar_token_s,
        ],
    )?;
    ctl_outputs.push_str(&rule.to_string());
    assert_eq!(rule["has_token"], true, "{rule}");
    let messages = sample_messages(MESSAGES, 11);
    produce(&stack.pulsar.url(), &full_topic, &messages, true).await?;
    let status = stack
        .wait_until_backed_up(RULE, MESSAGES as u64, Duration::from_secs(180))
        .await?;
    assert_eq!(status["state"], "running", "{status}");

    // 3. Raw gRPC: no token, a wrong one, the right one — on both daemons.
    let channel = channel_endpoint(&ingester_url)?.connect().await?;
    let mut open = proto::IngesterClient::new(channel.clone());
    assert_refused(open.list_rules(v1::ListRulesRequest {}).await, "");
    let mut wrong_client =
        proto::IngesterClient::with_interceptor(channel.clone(), send_token(Some("not-it-Wr0ng"))?);
    assert_refused(
        wrong_client.status(v1::StatusRequest { name: None }).await,
        "not-it-Wr0ng",
    );
    // The uploader-side RPCs are guarded as much as ctl's.
    assert_refused(
        wrong_client
            .list_sealed(v1::ListSealedRequest { max: 1, wait_ms: 0 })
            .await,
        "not-it-Wr0ng",
    );
    let mut right =
        proto::IngesterClient::with_interceptor(channel, send_token(Some(CONTROL_TOKEN))?);
    let rules = right
        .list_rules(v1::ListRulesRequest {})
        .await?
        .into_inner();
    assert_eq!(rules.rules.len(), 1);
    ctl_outputs.push_str(&format!("{rules:?}"));

    let channel = channel_endpoint(&uploader_url)?.connect().await?;
    let mut open = proto::UploaderClient::new(channel.clone());
    assert_refused(open.uploader_status(v1::UploaderStatusRequest {}).await, "");
    let mut right =
        proto::UploaderClient::with_interceptor(channel, send_token(Some(CONTROL_TOKEN))?);
    let up = right
        .uploader_status(v1::UploaderStatusRequest {})
        .await?
        .into_inner();
    assert!(up.ingester_reachable, "{up:?}");

    // 4. /metrics on both daemons agree with what happened.
    let ingester_body = http::metrics(ingester_metrics).await?;
    let uploader_body = http::metrics(uploader_metrics).await?;
    let label = format!("{{rule=\"{RULE}\"}}");
    let acked = http::sample(
        &ingester_body,
        &format!("tdmq_backup_ingester_messages_acked_total{label}"),
    )?;
    assert_eq!(acked, MESSAGES as f64, "{ingester_body}");
    let consumed = http::sample(
        &ingester_body,
        &format!("tdmq_backup_ingester_messages_consumed_total{label}"),
    )?;
    assert!(consumed >= MESSAGES as f64, "{ingester_body}");
    assert_eq!(
        http::sample(
            &ingester_body,
            &format!("tdmq_backup_ingester_spooled_messages{label}")
        )?,
        0.0
    );
    let stored = http::sample(
        &ingester_body,
        &format!("tdmq_backup_ingester_segments_stored_total{label}"),
    )?;
    assert!(stored >= (MESSAGES / 100) as f64, "{ingester_body}");
    http::sample(
        &ingester_body,
        &format!("tdmq_backup_ingester_backlog_age_seconds{label}"),
    )?;
    http::sample(
        &ingester_body,
        &format!("tdmq_backup_ingester_upload_failures_total{label}"),
    )?;
    http::sample(
        &ingester_body,
        &format!("tdmq_backup_ingester_quarantined_segments_total{label}"),
    )?;

    let uploaded = http::sample(
        &uploader_body,
        &format!("tdmq_backup_uploader_segments_uploaded_total{label}"),
    )?;
    assert_eq!(
        uploaded, stored,
        "every stored segment was uploaded by this uploader:\n{uploader_body}"
    );
    assert_eq!(
        http::sample(
            &uploader_body,
            "tdmq_backup_uploader_upload_duration_seconds_count"
        )?,
        uploaded,
        "{uploader_body}"
    );
    assert!(
        http::sample(
            &uploader_body,
            &format!("tdmq_backup_uploader_uploaded_bytes_total{label}")
        )? > 0.0
    );
    http::sample(&uploader_body, "tdmq_backup_uploader_uploads_in_flight")?;
    http::sample(
        &uploader_body,
        &format!("tdmq_backup_uploader_upload_failures_total{label}"),
    )?;
    assert_no_secret("ingester /metrics", &ingester_body);
    assert_no_secret("uploader /metrics", &uploader_body);

    // 5. Every reply ctl gives, and both logs: neither token anywhere.
    for args in [
        vec!["rule", "show", RULE],
        vec!["rule", "list"],
        vec!["status"],
        vec!["status", RULE],
        vec!["logs", RULE],
        vec!["segments", RULE],
    ] {
        for output in [&["--output", "json"][..], &["--output", "table"][..]] {
            let mut full = output.to_vec();
            full.extend(args.iter().copied());
            let out = stack.ctl(&full);
            assert!(out.status.success(), "{full:?}: {}", out_text(&out));
            ctl_outputs.push_str(&out_text(&out));
        }
    }
    assert!(ctl_outputs.contains(RULE), "the outputs were collected");
    assert_no_secret("ctl output", &ctl_outputs);

    if let Some(daemon) = stack.uploader.as_mut() {
        daemon.terminate()?;
    }
    if let Some(daemon) = stack.ingester.as_mut() {
        daemon.terminate()?;
    }
    for log in ["ingester.log", "uploader.log"] {
        let text = std::fs::read_to_string(stack.path(log))?;
        assert!(!text.is_empty(), "{log} is empty");
        assert_no_secret(log, &text);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_or_empty_token_file_stops_the_start_naming_key_and_path(
) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let empty = dir.path().join("empty.token");
    std::fs::write(&empty, "\n")?;
    let missing = dir.path().join("missing.token");
    for (bin, token_file) in [
        ("tdmq-backup-ingester", &empty),
        ("tdmq-backup-uploader", &missing),
    ] {
        let state = dir.path().join(format!("{bin}-state"));
        let dir_flag = if bin == "tdmq-backup-ingester" {
            "--data-dir"
        } else {
            "--state-dir"
        };
        let out = std::process::Command::new(harness::bin_path(bin))
            .args([
                dir_flag,
                &state.to_string_lossy(),
                "--listen",
                "127.0.0.1:0",
                "--auth-token-file",
                &token_file.to_string_lossy(),
            ])
            .env("COS_SECRET_ID", "")
            .output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{bin}: {stderr}");
        assert!(stderr.contains("auth_token_file"), "{bin}: {stderr}");
        assert!(
            stderr.contains(&*token_file.to_string_lossy()),
            "{bin}: {stderr}"
        );
    }
    Ok(())
}
