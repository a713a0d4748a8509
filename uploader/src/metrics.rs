//! `GET /metrics` in the Prometheus (OpenMetrics) text format, when `metrics_listen` is set.
//!
//! Counters and gauges are read at scrape time from the same snapshot as `tdmq-backup status`
//! ([`StatusState::snapshot`]); only the upload latency histogram is observed as uploads finish
//! (in `upload.rs`, once per committed segment).

use std::sync::Arc;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use proto::v1::UploaderStatusReply;
use tokio::net::TcpListener;

use crate::status::StatusState;

/// 50 ms to about 7 minutes, doubling: a small PUT to a large multipart upload.
pub fn upload_seconds_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.05, 2.0, 14))
}

fn clamp(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The exposition for one snapshot and the live latency histogram. Pure.
pub fn render(status: &UploaderStatusReply, upload_seconds: Histogram) -> String {
    let mut registry = Registry::with_prefix("tdmq_backup_uploader");
    let counter = |registry: &mut Registry, name: &str, help: &str, v: u64| {
        let c = Counter::<u64>::default();
        c.inc_by(v);
        registry.register(name, help, c);
    };
    counter(
        &mut registry,
        "segments_uploaded",
        "Segments stored and committed",
        status.segments_uploaded,
    );
    counter(
        &mut registry,
        "uploaded_bytes",
        "Bytes of stored and committed segments",
        status.bytes_uploaded,
    );
    counter(
        &mut registry,
        "upload_failures",
        "Failed upload attempts (each is retried)",
        status.upload_failures,
    );
    let gauge = |registry: &mut Registry, name: &str, help: &str, v: i64| {
        let g = Gauge::<i64>::default();
        g.set(v);
        registry.register(name, help, g);
    };
    gauge(
        &mut registry,
        "uploads_in_flight",
        "Uploads running now",
        clamp(status.in_flight.len() as u64),
    );
    gauge(
        &mut registry,
        "ingester_reachable",
        "1 when the last call to the ingester worked",
        i64::from(status.ingester_reachable),
    );
    gauge(
        &mut registry,
        "uptime_seconds",
        "Seconds since the daemon started",
        clamp(status.uptime_secs),
    );
    registry.register(
        "upload_duration_seconds",
        "Time to stream, store and commit one segment",
        upload_seconds,
    );
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut out, &registry);
    out
}

/// Serves `GET /metrics` until the task is aborted.
pub async fn serve(listener: TcpListener, status: Arc<StatusState>) {
    edge::metrics_http::serve(listener, status.readiness().clone(), move || {
        let status = status.clone();
        async move { Ok(render(&status.snapshot(), status.upload_seconds())) }
    })
    .await
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn renders_counters_gauges_and_the_histogram() {
        let state = StatusState::new("file:///tmp/x".into());
        state.record_stored(100);
        state.record_stored(50);
        state.record_failure("boom");
        state.observe_upload(Duration::from_millis(120));
        state.observe_upload(Duration::from_millis(80));
        let text = render(&state.snapshot(), state.upload_seconds());
        for line in [
            "tdmq_backup_uploader_segments_uploaded_total 2",
            "tdmq_backup_uploader_uploaded_bytes_total 150",
            "tdmq_backup_uploader_upload_failures_total 1",
            "tdmq_backup_uploader_uploads_in_flight 0",
            "tdmq_backup_uploader_ingester_reachable 0",
            "tdmq_backup_uploader_upload_duration_seconds_count 2",
            "tdmq_backup_uploader_upload_duration_seconds_bucket{le=\"0.1\"} 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from:\n{text}"
            );
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
