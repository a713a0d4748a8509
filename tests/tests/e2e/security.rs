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
    drop(ingester);
    let mut uploader = Daemon::spawn(
        "tdmq-backup-uploader",
        &uploader_args(dir.path(), &["--auth-token-file", &token]),
        &env,
        dir.path().join("uploader-token.log"),
    )?;
    wait_for_log_line(&mut uploader, "uploader started").await?;
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
    wait_for_log_line(&mut uploader, "uploader started").await?;
    assert!(
        uploader.log().contains("allow_unauthenticated"),
        "{}",
        uploader.log()
    );
    Ok(())
}
