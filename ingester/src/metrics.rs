//! `GET /metrics` in the Prometheus (OpenMetrics) text format, when `metrics_listen` is set.
//!
//! Nothing on the message path is instrumented: each scrape reads the same snapshot as
//! `tdmq-backup status` ([`IngesterApp::status`]) and encodes it with prometheus-client. Counters
//! count since the daemon started (they restart at 0, as Prometheus expects of counters).

use std::sync::Arc;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use proto::v1;
use tokio::net::TcpListener;

use crate::app::IngesterApp;

type Labels = Vec<(String, String)>;

fn rule(name: &str) -> Labels {
    vec![("rule".to_string(), name.to_string())]
}

fn clamp(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The exposition for one status snapshot plus the per-rule upload failure counts. Pure.
pub fn render(status: &v1::StatusReply, upload_failures: &[(String, u64)]) -> String {
    let mut registry = Registry::with_prefix("tdmq_backup_ingester");
    let counters =
        |registry: &mut Registry, name: &str, help: &str, get: &dyn Fn(&v1::RuleStatus) -> u64| {
            let family = Family::<Labels, Counter>::default();
            for r in &status.rules {
                family.get_or_create(&rule(&r.name)).inc_by(get(r));
            }
            registry.register(name, help, family);
        };
    counters(
        &mut registry,
        "messages_consumed",
        "Messages received from Pulsar (duplicates included)",
        &|r| r.messages_consumed,
    );
    counters(
        &mut registry,
        "duplicates_dropped",
        "Redelivered messages dropped because they were spooled already",
        &|r| r.duplicates_dropped,
    );
    counters(
        &mut registry,
        "segments_stored",
        "Segments the uploader committed as stored",
        &|r| r.segments_stored,
    );
    counters(
        &mut registry,
        "messages_acked",
        "Messages acknowledged on Pulsar (after their object was stored)",
        &|r| r.messages_acked,
    );
    counters(
        &mut registry,
        "quarantined_segments",
        "Segment files that failed their checksum and were quarantined",
        &|r| r.quarantined_segments,
    );

    let failures = Family::<Labels, Counter>::default();
    for (name, n) in upload_failures {
        failures.get_or_create(&rule(name)).inc_by(*n);
    }
    registry.register(
        "upload_failures",
        "Upload failures reported by the uploader",
        failures,
    );

    let gauges =
        |registry: &mut Registry, name: &str, help: &str, get: &dyn Fn(&v1::RuleStatus) -> i64| {
            let family = Family::<Labels, Gauge>::default();
            for r in &status.rules {
                family.get_or_create(&rule(&r.name)).set(get(r));
            }
            registry.register(name, help, family);
        };
    gauges(
        &mut registry,
        "spooled_messages",
        "Messages in the spool, not yet acknowledged",
        &|r| clamp(r.spooled_messages),
    );
    gauges(
        &mut registry,
        "spooled_bytes",
        "Record bytes in the spool, not yet acknowledged",
        &|r| clamp(r.spooled_bytes),
    );
    gauges(
        &mut registry,
        "open_segment_messages",
        "Messages in the segment being filled",
        &|r| clamp(r.open_segment_messages),
    );
    gauges(
        &mut registry,
        "sealed_segments",
        "Sealed segments waiting to be uploaded",
        &|r| clamp(r.sealed_segments),
    );
    gauges(
        &mut registry,
        "consumer_connected",
        "1 when the rule's Pulsar consumer is connected",
        &|r| i64::from(r.consumer_connected),
    );

    let backlog = Family::<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
    for r in &status.rules {
        // Milliseconds → seconds; precision loss only past 2^53 ms.
        #[allow(clippy::cast_precision_loss)]
        let secs = r.backlog_age_ms as f64 / 1000.0;
        backlog.get_or_create(&rule(&r.name)).set(secs);
    }
    registry.register(
        "backlog_age_seconds",
        "How far behind the backup is: age of the oldest message not yet stored, counting what waits in Pulsar (at least the time since the rule stopped reading while it is paused, disconnected or blocked)",
        backlog,
    );
    let broker_backlog = Family::<Labels, Gauge>::default();
    for r in status.rules.iter().filter(|r| r.broker_backlog_known) {
        broker_backlog
            .get_or_create(&rule(&r.name))
            .set(clamp(r.broker_backlog_messages));
    }
    registry.register(
        "broker_backlog_messages",
        "Messages the rule's subscription holds on the broker, as it last said (spooled but unacknowledged ones included)",
        broker_backlog,
    );

    let state = Family::<Labels, Gauge>::default();
    for r in &status.rules {
        let labels = vec![
            ("rule".to_string(), r.name.clone()),
            ("state".to_string(), r.state.clone()),
        ];
        state.get_or_create(&labels).set(1);
    }
    registry.register(
        "rule_state",
        "1 for the rule's current state (running, paused, error)",
        state,
    );

    let disk_full = Gauge::<i64>::default();
    disk_full.set(i64::from(status.spool_disk_full));
    registry.register(
        "spool_disk_full",
        "1 while a full spool disk holds consumption back",
        disk_full,
    );
    let uptime = Gauge::<i64>::default();
    uptime.set(clamp(status.uptime_secs));
    registry.register("uptime_seconds", "Seconds since the daemon started", uptime);

    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut out, &registry);
    out
}

/// Serves `GET /metrics` until the task is aborted; the body is rendered from `status` at
/// scrape time.
pub async fn serve(listener: TcpListener, app: Arc<IngesterApp>) {
    edge::metrics_http::serve(listener, app.readiness().clone(), move || {
        let app = app.clone();
        async move {
            let status = app.status(None).await.map_err(|e| e.to_string())?;
            Ok(render(&status, &app.upload_failures().await))
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_rule_counter_and_gauge() {
        let status = v1::StatusReply {
            rules: vec![v1::RuleStatus {
                name: "orders".into(),
                state: "running".into(),
                consumer_connected: true,
                messages_consumed: 12,
                duplicates_dropped: 2,
                spooled_messages: 3,
                spooled_bytes: 300,
                sealed_segments: 1,
                segments_stored: 4,
                messages_acked: 9,
                quarantined_segments: 1,
                backlog_age_ms: 1500,
                ..v1::RuleStatus::default()
            }],
            uptime_secs: 7,
            ..v1::StatusReply::default()
        };
        let text = render(&status, &[("orders".into(), 5)]);
        for line in [
            "tdmq_backup_ingester_messages_consumed_total{rule=\"orders\"} 12",
            "tdmq_backup_ingester_duplicates_dropped_total{rule=\"orders\"} 2",
            "tdmq_backup_ingester_spooled_messages{rule=\"orders\"} 3",
            "tdmq_backup_ingester_spooled_bytes{rule=\"orders\"} 300",
            "tdmq_backup_ingester_sealed_segments{rule=\"orders\"} 1",
            "tdmq_backup_ingester_segments_stored_total{rule=\"orders\"} 4",
            "tdmq_backup_ingester_messages_acked_total{rule=\"orders\"} 9",
            "tdmq_backup_ingester_upload_failures_total{rule=\"orders\"} 5",
            "tdmq_backup_ingester_quarantined_segments_total{rule=\"orders\"} 1",
            "tdmq_backup_ingester_backlog_age_seconds{rule=\"orders\"} 1.5",
            "tdmq_backup_ingester_consumer_connected{rule=\"orders\"} 1",
            "tdmq_backup_ingester_rule_state{rule=\"orders\",state=\"running\"} 1",
            "tdmq_backup_ingester_spool_disk_full 0",
            "tdmq_backup_ingester_uptime_seconds 7",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from:\n{text}"
            );
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
