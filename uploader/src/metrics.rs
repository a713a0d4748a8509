//! `GET /metrics` in the Prometheus (OpenMetrics) text format, when `metrics_listen` is set.
//!
//! Counters and gauges are read at scrape time from the same snapshot as `tdmq-backup status`
//! ([`StatusState::snapshot`]) and its per-rule counters ([`StatusState::rule_counters`]); only
//! the upload latency histogram is observed as uploads finish (in `upload.rs`, once per
//! committed segment). The build and process metrics are every daemon's
//! ([`edge::process_metrics`]). A rule the ingester no longer runs leaves the per-rule series
//! (see [`StatusState::retain_rules`]). The S3 requests by operation come from the store
//! router's clients ([`RequestCounts`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use proto::v1::UploaderStatusReply;
use tokio::net::TcpListener;

use crate::status::{RuleCounters, StatusState};
use crate::store::s3::RequestCounts;

type Labels = Vec<(String, String)>;

/// 50 ms to about 7 minutes, doubling: a small PUT to a large multipart upload.
pub fn upload_seconds_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.05, 2.0, 14))
}

fn clamp(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The exposition for one snapshot, its per-rule counters, the live latency histogram and the
/// S3 requests by operation. Pure but for the process metrics, read from `/proc/self`.
pub fn render(
    status: &UploaderStatusReply,
    rules: &BTreeMap<String, RuleCounters>,
    upload_seconds: Histogram,
    requests: &BTreeMap<String, u64>,
) -> String {
    let mut root = Registry::default();
    edge::process_metrics::register(&mut root, "uploader");
    let registry = root.sub_registry_with_prefix("tdmq_backup_uploader");
    let per_rule =
        |registry: &mut Registry, name: &str, help: &str, get: &dyn Fn(&RuleCounters) -> u64| {
            let family = Family::<Labels, Counter>::default();
            for (rule, counters) in rules {
                family
                    .get_or_create(&vec![("rule".to_string(), rule.clone())])
                    .inc_by(get(counters));
            }
            registry.register(name, help, family);
        };
    per_rule(
        registry,
        "segments_uploaded",
        "Segments stored and committed",
        &|r| r.segments_uploaded,
    );
    per_rule(
        registry,
        "uploaded_bytes",
        "Bytes of stored and committed segments",
        &|r| r.bytes_uploaded,
    );
    per_rule(
        registry,
        "upload_failures",
        "Failed upload attempts (each is retried)",
        &|r| r.upload_failures,
    );
    per_rule(
        registry,
        "fence_conflicts",
        "Fenced segments whose key already held another ingester's object (what it holds was dropped from the segment)",
        &|r| r.fence_conflicts,
    );
    let last_stored = Family::<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
    for (rule, counters) in rules.iter().filter(|(_, c)| c.last_stored_ms > 0) {
        // Milliseconds → seconds; exact for any date this side of year 285,000.
        #[allow(clippy::cast_precision_loss)]
        let secs = counters.last_stored_ms as f64 / 1000.0;
        last_stored
            .get_or_create(&vec![("rule".to_string(), rule.clone())])
            .set(secs);
    }
    registry.register(
        "last_stored_timestamp_seconds",
        "Unix time of the last object this uploader stored and committed for the rule",
        last_stored,
    );
    let gauge = |registry: &mut Registry, name: &str, help: &str, v: i64| {
        let g = Gauge::<i64>::default();
        g.set(v);
        registry.register(name, help, g);
    };
    gauge(
        registry,
        "uploads_in_flight",
        "Uploads running now",
        clamp(status.in_flight.len() as u64),
    );
    gauge(
        registry,
        "ingester_reachable",
        "1 when the last call to the ingester worked",
        i64::from(status.ingester_reachable),
    );
    gauge(
        registry,
        "uptime_seconds",
        "Seconds since the daemon started",
        clamp(status.uptime_secs),
    );
    let by_operation = Family::<Labels, Counter>::default();
    for (operation, n) in requests {
        by_operation
            .get_or_create(&vec![("operation".to_string(), operation.clone())])
            .inc_by(*n);
    }
    registry.register(
        "store_requests",
        "Requests sent to S3-compatible stores, by operation, each retry counted",
        by_operation,
    );
    registry.register(
        "upload_duration_seconds",
        "Time to stream, store and commit one segment",
        upload_seconds,
    );
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut out, &root);
    out
}

/// Serves `GET /metrics` until the task is aborted.
pub async fn serve(listener: TcpListener, status: Arc<StatusState>, requests: RequestCounts) {
    edge::metrics_http::serve(listener, status.readiness().clone(), move || {
        let status = status.clone();
        let requests = requests.clone();
        async move {
            Ok(render(
                &status.snapshot(),
                &status.rule_counters(),
                status.upload_seconds(),
                &requests.snapshot(),
            ))
        }
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
        #[allow(clippy::cast_precision_loss)]
        let before = proto::types::time::now_millis() as f64 / 1000.0;
        state.record_stored("orders", 100);
        state.record_stored("orders", 50);
        state.record_stored("refunds", 30);
        state.record_failure("refunds", "boom");
        state.observe_upload(Duration::from_millis(120));
        state.observe_upload(Duration::from_millis(80));
        let text = render(
            &state.snapshot(),
            &state.rule_counters(),
            state.upload_seconds(),
            &BTreeMap::from([("PutObject".to_string(), 3), ("HeadObject".to_string(), 1)]),
        );
        for line in [
            "tdmq_backup_uploader_store_requests_total{operation=\"PutObject\"} 3",
            "tdmq_backup_uploader_store_requests_total{operation=\"HeadObject\"} 1",
            "tdmq_backup_uploader_segments_uploaded_total{rule=\"orders\"} 2",
            "tdmq_backup_uploader_segments_uploaded_total{rule=\"refunds\"} 1",
            "tdmq_backup_uploader_uploaded_bytes_total{rule=\"orders\"} 150",
            "tdmq_backup_uploader_uploaded_bytes_total{rule=\"refunds\"} 30",
            "tdmq_backup_uploader_upload_failures_total{rule=\"orders\"} 0",
            "tdmq_backup_uploader_upload_failures_total{rule=\"refunds\"} 1",
            "tdmq_backup_uploader_uploads_in_flight 0",
            "tdmq_backup_uploader_ingester_reachable 0",
            "tdmq_backup_uploader_upload_duration_seconds_count 2",
            "tdmq_backup_uploader_upload_duration_seconds_bucket{le=\"0.1\"} 1",
            "# TYPE tdmq_backup_build info",
            "# TYPE process_open_fds gauge",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from:\n{text}"
            );
        }
        let stored_at = text
            .lines()
            .find_map(|l| {
                l.strip_prefix(
                    "tdmq_backup_uploader_last_stored_timestamp_seconds{rule=\"orders\"} ",
                )
            })
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or_default();
        assert!(
            (stored_at - before).abs() < 60.0,
            "{stored_at} vs {before}:\n{text}"
        );
        assert!(text.contains("daemon=\"uploader\"}"), "{text}");

        // A rule the ingester no longer runs: its series go.
        state.retain_rules("http://a", &["orders".to_string()]);
        let text = render(
            &state.snapshot(),
            &state.rule_counters(),
            state.upload_seconds(),
            &BTreeMap::new(),
        );
        assert!(!text.contains("refunds"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
