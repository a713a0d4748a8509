//! The ingester's application layer in-process, on a temporary data dir: what a caller of its
//! RPCs can make it store. The rules here point at a broker that does not exist; their
//! consumers keep retrying in the background, which nothing here depends on.

use std::time::Duration;

use ingester::app::IngesterApp;
use ingester::consumer::ConsumerLimits;
use proto::v1;

async fn app(dir: &std::path::Path) -> std::sync::Arc<IngesterApp> {
    IngesterApp::open(
        dir.join("ingester"),
        1000,
        ConsumerLimits {
            max_spool_bytes: 0,
            receiver_queue: 100,
            receiver_queue_bytes: 0,
            disk_reserve_bytes: 0,
        },
        ingester::consumer::Membership::new("test-node"),
        ingester::source::trust::PulsarTrust::default(),
    )
    .await
    .expect("the ingester opens")
}

fn spec(name: &str) -> v1::RuleSpec {
    v1::RuleSpec {
        name: name.into(),
        // Nothing listens on port 1.
        service_url: Some("pulsar://127.0.0.1:1".into()),
        topic: Some(format!("{name}-topic")),
        subscription: Some("tdmq-backup".into()),
        bucket: Some("backup-1250000000".into()),
        region: Some("ap-guangzhou".into()),
        ..v1::RuleSpec::default()
    }
}

/// An uploader's failure report is stored in the rule's history and shown in `status`: a
/// report of any length must not make either grow without bound.
#[tokio::test]
async fn an_upload_failure_report_is_cut_to_4_kib() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = app(dir.path()).await;
    app.create_rule(&spec("orders")).await.expect("created");

    let huge = "é".repeat(300_000); // 600 KB, two bytes a character
    app.report_failure(&v1::UploadFailure {
        rule: "orders".into(),
        segment_no: 7,
        error: huge,
        attempt: 3,
    })
    .await
    .expect("reported");

    let logs = app
        .logs(&v1::LogsRequest {
            name: "orders".into(),
            failed_only: true,
            ..v1::LogsRequest::default()
        })
        .expect("logs");
    let failure = logs
        .iter()
        .find(|e| e.kind == "upload_failed")
        .expect("the failure is in the history");
    assert!(
        failure.message.len() <= 4096 + 200,
        "{} bytes in the history",
        failure.message.len()
    );
    assert!(failure
        .message
        .starts_with("upload of segment 7 failed (attempt 3): éé"));
    assert!(
        failure.message.contains("cut"),
        "says it was cut: {}",
        &failure.message[failure.message.len() - 80..]
    );

    let status = app.status(Some("orders")).await.expect("status");
    let last_error = &status.rules[0].last_error;
    assert!(
        last_error.len() <= 4096 + 200,
        "{} bytes in status",
        last_error.len()
    );
    tokio::time::timeout(Duration::from_secs(10), app.shutdown())
        .await
        .expect("shuts down");
}
