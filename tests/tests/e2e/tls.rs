//! TLS between hosts: both daemons serve gRPC over TLS (with the control-plane token, as in
//! production), the uploader verifies the ingester against a CA file, and ctl reaches both with
//! https:// URLs and `--ca-file`. A CA and a server certificate (for `localhost` and 127.0.0.1)
//! are made at test time with rcgen.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use anyhow::Context;
use harness::{bin_path, check_exactly_once, produce, sample_messages, CertFiles, TestCerts};

use crate::util::{eventually, unique_topic, Extra, Stack};

const RULE: &str = "tls-bk";
const MESSAGES: usize = 300;
const CONTROL_TOKEN: &str = "tls-ctl-plane-token-5Hq8";

/// A CA, and a server certificate it signed for `localhost` and the IP 127.0.0.1, as PEM files.
fn make_certs(dir: &Path) -> anyhow::Result<CertFiles> {
    TestCerts::generate("tdmq-backup test CA", "tdmq-backup daemon")?.write(dir)
}

fn text(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

/// ctl with exactly these arguments (no harness defaults).
fn ctl_raw(args: &[&str]) -> Output {
    let bin = bin_path("tdmq-backup");
    std::process::Command::new(&bin)
        .args(args)
        .env_remove("TDMQ_BACKUP_CA_FILE")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {} {args:?}: {e}", bin.display()))
}

/// A failure printed as exactly one `error: ...` line; that line.
fn one_error_line(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "expected a failure: {stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line expected: {stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    println!("ctl: {}", lines[0]);
    lines[0].to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_runs_over_tls_and_ctl_needs_the_ca_and_the_right_scheme() -> anyhow::Result<()> {
    let mut stack = Stack::services().await?;
    let certs = make_certs(stack.dir.path())?;
    let token = stack.path("control.token");
    std::fs::write(&token, format!("{CONTROL_TOKEN}\n"))?;
    let serve_tls = vec![
        "--tls-cert".to_string(),
        text(&certs.cert),
        "--tls-key".into(),
        text(&certs.key),
        "--auth-token-file".into(),
        text(&token),
    ];
    stack.ingester_extra = Extra {
        args: serve_tls.clone(),
        env: Vec::new(),
    };
    let mut uploader_args = serve_tls;
    // Segments are streamed over the TLS channel too, as between two hosts (on one host the
    // uploader would read the sealed files from disk).
    uploader_args.extend([
        "--ingester-ca".to_string(),
        text(&certs.ca),
        "--read-local".into(),
        "false".into(),
    ]);
    stack.uploader_extra = Extra {
        args: uploader_args,
        env: Vec::new(),
    };
    stack.scheme = "https";
    stack.host = "localhost";
    stack.ctl_token_file = Some(token.clone());
    stack.ctl_extra_args = vec!["--ca-file".into(), text(&certs.ca)];
    stack.start_ingester().await?;
    stack.start_uploader().await?;
    assert!(stack.ingester_url().starts_with("https://localhost:"));

    // 1. ctl over TLS: a rule, and a backup end to end (the uploader pulls over TLS too).
    let topic = unique_topic("tls");
    let full_topic = format!("persistent://public/default/{topic}");
    let rule = stack.create_rule(RULE, &full_topic, &["--max-messages", "100"])?;
    assert_eq!(rule["name"], RULE, "{rule}");
    let messages = sample_messages(MESSAGES, 41);
    produce(&stack.pulsar.url(), &full_topic, &messages, true).await?;
    let status = stack
        .wait_until_backed_up(RULE, MESSAGES as u64, Duration::from_secs(90))
        .await?;
    assert!(
        status["messages_acked"].as_u64() >= Some(MESSAGES as u64),
        "{status}"
    );
    let all = stack.ctl_json(&["status"])?;
    assert_eq!(all["ingester"]["reachable"], true, "{all}");
    assert_eq!(all["uploader"]["reachable"], true, "{all}");
    assert_eq!(all["uploader"]["ingester_reachable"], true, "{all}");
    let objects = harness::read_all(&stack.s3.client(), crate::util::BUCKET, "").await?;
    let stored: usize = objects.iter().map(|o| o.records.len()).sum();
    assert!(stored >= MESSAGES, "{stored} records stored");
    let uploader_log = stack.uploader.as_ref().map(|d| d.log()).unwrap_or_default();
    let sources = harness::stored_segment_sources(&uploader_log);
    assert!(
        !sources.is_empty() && sources.iter().all(|s| s == "ingester"),
        "every segment came over ReadSegment: {sources:?}"
    );

    // The IP SAN works too, and --tls-domain overrides the name checked.
    let (ingester_port, token_s, ca_s) = (stack.ingester_port, text(&token), text(&certs.ca));
    let by_ip = format!("https://127.0.0.1:{ingester_port}");
    for extra in [&[][..], &["--tls-domain", "localhost"][..]] {
        let mut args = vec![
            "--ingester",
            by_ip.as_str(),
            "--token-file",
            token_s.as_str(),
            "--ca-file",
            ca_s.as_str(),
        ];
        args.extend_from_slice(extra);
        args.extend(["rule", "list"]);
        let out = ctl_raw(&args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // A name the certificate does not hold is refused.
    let out = ctl_raw(&[
        "--ingester",
        &by_ip,
        "--token-file",
        &token_s,
        "--ca-file",
        &ca_s,
        "--tls-domain",
        "elsewhere.example",
        "rule",
        "list",
    ]);
    let line = one_error_line(&out);
    assert!(line.contains("the ingester at"), "{line}");

    // 2. Without --ca-file: the test CA is in no trust store, so verification fails, in one line
    // that names the daemon and says what to pass.
    let https = stack.ingester_url();
    let out = ctl_raw(&[
        "--ingester",
        &https,
        "--token-file",
        &token_s,
        "rule",
        "list",
    ]);
    let line = one_error_line(&out);
    assert!(line.contains(&format!("the ingester at {https}")), "{line}");
    assert!(line.contains("--ca-file"), "{line}");

    // 3. http:// against the TLS server: one line naming the daemon, the URL and the fix.
    let http = format!("http://127.0.0.1:{ingester_port}");
    let out = ctl_raw(&[
        "--ingester",
        &http,
        "--token-file",
        &token_s,
        "rule",
        "list",
    ]);
    let line = one_error_line(&out);
    assert!(line.contains(&format!("the ingester at {http}")), "{line}");
    assert!(line.contains("https://"), "{line}");

    // 4. A bad --ca-file is named with its path.
    let missing = stack.path("missing-ca.pem");
    let out = ctl_raw(&[
        "--ingester",
        &https,
        "--ca-file",
        &text(&missing),
        "rule",
        "list",
    ]);
    let line = one_error_line(&out);
    assert!(
        line.contains(&format!("--ca-file {}", missing.display())),
        "{line}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tls_files_stop_the_start_naming_key_and_path() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let certs = make_certs(dir.path())?;
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not PEM at all\n")?;
    let missing = dir.path().join("missing.pem");
    let cases: [(&str, Vec<String>, &str, &Path); 4] = [
        (
            "tdmq-backup-ingester",
            vec![
                "--tls-cert".into(),
                text(&garbage),
                "--tls-key".into(),
                text(&certs.key),
            ],
            "tls_cert",
            &garbage,
        ),
        (
            "tdmq-backup-ingester",
            vec!["--tls-cert".into(), text(&certs.cert)],
            "tls_key",
            &certs.cert,
        ),
        (
            "tdmq-backup-uploader",
            vec![
                "--tls-cert".into(),
                text(&certs.cert),
                "--tls-key".into(),
                text(&missing),
            ],
            "tls_key",
            &missing,
        ),
        (
            "tdmq-backup-uploader",
            vec![
                "--ingester".into(),
                "https://localhost:7601".into(),
                "--ingester-ca".into(),
                text(&garbage),
            ],
            "ingester_ca",
            &garbage,
        ),
    ];
    for (bin, flags, key, path) in cases {
        let state = dir.path().join(format!("{bin}-state"));
        let dir_flag = if bin == "tdmq-backup-ingester" {
            "--data-dir"
        } else {
            "--state-dir"
        };
        let out = std::process::Command::new(bin_path(bin))
            .args([
                dir_flag,
                &state.to_string_lossy(),
                "--listen",
                "127.0.0.1:0",
            ])
            .args(&flags)
            .env("COS_SECRET_ID", "")
            .output()
            .with_context(|| format!("running {bin}"))?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{bin} {flags:?}: {stderr}");
        assert!(stderr.contains(key), "{bin} {flags:?}: {stderr}");
        assert!(
            stderr.contains(&*path.to_string_lossy()),
            "{bin} {flags:?}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{bin} {flags:?}: {stderr}");
    }
    Ok(())
}

/// An S3-compatible store on HTTPS with a private CA, trusted through `SSL_CERT_FILE` (the SDK's
/// default client reads it): there the uploader sends `x-amz-checksum-crc32c` and signs no
/// payload hash (TLS protects the body), which the store must accept. Every message lands in
/// exactly one object and the subscription is acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backs_up_to_an_https_store_with_a_private_ca() -> anyhow::Result<()> {
    let mut stack = Stack::services_with_https_s3().await?;
    stack.start_ingester().await?;
    stack.start_uploader().await?;
    let rule = "https-store";
    let topic = unique_topic("https-store");
    let messages = sample_messages(400, 37);
    produce(
        &stack.pulsar.url(),
        &format!("persistent://public/default/{topic}"),
        &messages,
        true,
    )
    .await?;
    // Small segments and 5 MiB parts are not needed: single PUTs and the window flush suffice.
    stack.create_rule(rule, &topic, &["--max-messages", "150", "--window", "1h"])?;
    eventually("every message consumed", Duration::from_secs(60), || {
        let consumed = stack.rule_status(rule)?["messages_consumed"].as_u64();
        Ok((consumed >= Some(messages.len() as u64)).then_some(()))
    })
    .await?;
    stack.ctl_json(&["rule", "flush", rule])?;
    let objects = stack
        .wait_until_stored(rule, &messages, Duration::from_secs(60))
        .await?;
    let report = check_exactly_once(&objects, &messages)?;
    assert_eq!(report.records, messages.len());
    assert!(objects.len() >= 3, "{} objects", objects.len());
    let status = stack.ctl_json(&["status"])?.to_string();
    assert!(
        status.contains("https://127.0.0.1") && status.contains("CRC32C"),
        "{status}"
    );
    Ok(())
}

/// A rule whose service URL is `pulsar+ssl://`: the ingester's consumers verify the broker's
/// certificate against the public roots plus `pulsar_ca_file` (here the test CA, which signed
/// the certificate of a TLS front for pulsar-lite), and back the topic up as over plain TCP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_reads_a_pulsar_ssl_broker_trusted_through_pulsar_ca_file() -> anyhow::Result<()> {
    let mut stack = Stack::services().await?;
    let certs = TestCerts::generate("pulsar test CA", "pulsar broker")?;
    let files = certs.write(stack.dir.path())?;
    stack.ingester_extra = Extra {
        args: vec!["--pulsar-ca-file".into(), text(&files.ca)],
        env: Vec::new(),
    };
    stack.start_ingester().await?;
    stack.start_uploader().await?;
    // In front of the relay, which makes pulsar-lite's MESSAGE frames readable by pulsar-rs.
    let front =
        harness::services::pulsar_tls::PulsarTlsFront::start(stack.pulsar.relay_addr(), &certs)
            .await?;
    let rule = "ssl-bk";
    let topic = format!("persistent://public/default/{}", unique_topic("ssl"));
    let messages = sample_messages(MESSAGES, 43);
    produce(&stack.pulsar.url(), &topic, &messages, true).await?;
    let mut args = stack.create_rule_args(rule, &topic, &["--max-messages", "100"]);
    let at = args
        .iter()
        .position(|a| a == "--service-url")
        .context("--service-url")?;
    args[at + 1] = front.url();
    assert!(args[at + 1].starts_with("pulsar+ssl://localhost:"));
    stack.ctl_json(&args.iter().map(String::as_str).collect::<Vec<_>>())?;
    stack
        .wait_until_backed_up(rule, MESSAGES as u64, Duration::from_secs(90))
        .await?;
    let objects = stack
        .wait_until_stored(rule, &messages, Duration::from_secs(60))
        .await?;
    assert_eq!(check_exactly_once(&objects, &messages)?.records, MESSAGES);
    Ok(())
}
