//! `GET /metrics` in the Prometheus (OpenMetrics) text format, when `metrics_listen` is set.
//!
//! Nothing on the message path is instrumented: each scrape reads the same snapshot as
//! `tdmq-backup status` ([`IngesterApp::status`]) plus the few counters only `/metrics` shows
//! ([`IngesterApp::rule_metrics`]) and encodes them with prometheus-client, along with the build
//! and process metrics every daemon has ([`edge::process_metrics`]). Counters count since the
//! daemon started (they restart at 0, as Prometheus expects of counters). The registry is made
//! anew for each scrape from the rules running then, so a deleted rule's series are gone from the
//! next scrape on.

use std::sync::Arc;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use proto::v1;
use tokio::net::TcpListener;

use crate::app::{IngesterApp, RuleMetrics};

type Labels = Vec<(String, String)>;

fn rule(name: &str) -> Labels {
    vec![("rule".to_string(), name.to_string())]
}

fn clamp(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// What one scrape shows.
#[derive(Debug, Clone, Default)]
pub struct Scrape {
    pub status: v1::StatusReply,
    pub rules: Vec<RuleMetrics>,
    /// Free bytes on `data_dir`'s filesystem; `None` when it cannot say.
    pub disk_free_bytes: Option<u64>,
    pub disk_reserve_bytes: u64,
}

/// The exposition for one scrape. Pure but for the process metrics, read from `/proc/self`.
pub fn render(scrape: &Scrape) -> String {
    let status = &scrape.status;
    let mut root = Registry::default();
    edge::process_metrics::register(&mut root, "ingester");
    let registry = root.sub_registry_with_prefix("tdmq_backup_ingester");
    let counters =
        |registry: &mut Registry, name: &str, help: &str, get: &dyn Fn(&v1::RuleStatus) -> u64| {
            let family = Family::<Labels, Counter>::default();
            for r in &status.rules {
                family.get_or_create(&rule(&r.name)).inc_by(get(r));
            }
            registry.register(name, help, family);
        };
    counters(
        registry,
        "messages_consumed",
        "Messages received from Pulsar and spooled (redeliveries are counted in duplicates_dropped)",
        &|r| r.messages_consumed,
    );
    counters(
        registry,
        "duplicates_dropped",
        "Redelivered messages dropped because they were spooled already",
        &|r| r.duplicates_dropped,
    );
    counters(
        registry,
        "segments_stored",
        "Segments the uploader committed as stored",
        &|r| r.segments_stored,
    );
    counters(
        registry,
        "messages_acked",
        "Messages acknowledged on Pulsar (after their object was stored)",
        &|r| r.messages_acked,
    );
    counters(
        registry,
        "quarantined_segments",
        "Segment files that failed their checksum and were quarantined",
        &|r| r.quarantined_segments,
    );

    let per_rule_counter =
        |registry: &mut Registry, name: &str, help: &str, get: &dyn Fn(&RuleMetrics) -> u64| {
            let family = Family::<Labels, Counter>::default();
            for r in &scrape.rules {
                family.get_or_create(&rule(&r.name)).inc_by(get(r));
            }
            registry.register(name, help, family);
        };
    per_rule_counter(
        registry,
        "upload_failures",
        "Upload failures reported by the uploader",
        &|r| r.upload_failures,
    );
    per_rule_counter(
        registry,
        "consumed_bytes",
        "Payload bytes of the messages received from Pulsar and spooled (redeliveries left out)",
        &|r| r.consumed_bytes,
    );
    let last_stored = Family::<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
    for r in &scrape.rules {
        // Milliseconds → seconds; exact for any date this side of year 285,000.
        #[allow(clippy::cast_precision_loss)]
        let secs = r.nothing_stored_since_ms as f64 / 1000.0;
        last_stored.get_or_create(&rule(&r.name)).set(secs);
    }
    registry.register(
        "last_stored_timestamp_seconds",
        "Unix time of the rule's last stored object (committed by an uploader); before the first one since the rule started in this process, that start, so the age is a lower bound",
        last_stored,
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
        registry,
        "spooled_messages",
        "Messages in the spool, not yet acknowledged",
        &|r| clamp(r.spooled_messages),
    );
    gauges(
        registry,
        "spooled_bytes",
        "Record bytes in the spool, not yet acknowledged",
        &|r| clamp(r.spooled_bytes),
    );
    gauges(
        registry,
        "open_segment_messages",
        "Messages in the segment being filled",
        &|r| clamp(r.open_segment_messages),
    );
    gauges(
        registry,
        "sealed_segments",
        "Sealed segments waiting to be uploaded",
        &|r| clamp(r.sealed_segments),
    );
    gauges(
        registry,
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
        "1 for the rule's current state (running, paused, blocked, error)",
        state,
    );

    let disk_full = Gauge::<i64>::default();
    disk_full.set(i64::from(status.spool_disk_full));
    registry.register(
        "spool_disk_full",
        "1 while a full spool disk holds consumption back",
        disk_full,
    );
    if let Some(free) = scrape.disk_free_bytes {
        let g = Gauge::<i64>::default();
        g.set(clamp(free));
        registry.register(
            "spool_disk_free_bytes",
            "Bytes free for the ingester on data_dir's filesystem",
            g,
        );
    }
    let reserve = Gauge::<i64>::default();
    reserve.set(clamp(scrape.disk_reserve_bytes));
    registry.register(
        "spool_disk_reserve_bytes",
        "disk_reserve_bytes: consumption pauses when the free bytes fall below this plus what sealing the open segments will write",
        reserve,
    );
    let uptime = Gauge::<i64>::default();
    uptime.set(clamp(status.uptime_secs));
    registry.register("uptime_seconds", "Seconds since the daemon started", uptime);

    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut out, &root);
    out
}

/// Serves `GET /metrics` until the task is aborted; the body is rendered from `status` at
/// scrape time.
pub async fn serve(listener: TcpListener, app: Arc<IngesterApp>) {
    edge::metrics_http::serve(listener, app.readiness().clone(), move || {
        let app = app.clone();
        async move {
            let status = app.status(None).await.map_err(|e| e.to_string())?;
            let (disk_free_bytes, disk_reserve_bytes) = app.spool_disk();
            Ok(render(&Scrape {
                status,
                rules: app.rule_metrics().await,
                disk_free_bytes,
                disk_reserve_bytes,
            }))
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
                broker_backlog_known: true,
                broker_backlog_messages: 42,
                ..v1::RuleStatus::default()
            }],
            uptime_secs: 7,
            ..v1::StatusReply::default()
        };
        let text = render(&Scrape {
            status,
            rules: vec![RuleMetrics {
                name: "orders".into(),
                upload_failures: 5,
                consumed_bytes: 4096,
                nothing_stored_since_ms: 1_796_207_958_250,
            }],
            disk_free_bytes: Some(10_000),
            disk_reserve_bytes: 256,
        });
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
            "tdmq_backup_ingester_broker_backlog_messages{rule=\"orders\"} 42",
            "tdmq_backup_ingester_rule_state{rule=\"orders\",state=\"running\"} 1",
            "tdmq_backup_ingester_spool_disk_full 0",
            "tdmq_backup_ingester_uptime_seconds 7",
            "tdmq_backup_ingester_consumed_bytes_total{rule=\"orders\"} 4096",
            "tdmq_backup_ingester_last_stored_timestamp_seconds{rule=\"orders\"} 1796207958.25",
            "tdmq_backup_ingester_spool_disk_free_bytes 10000",
            "tdmq_backup_ingester_spool_disk_reserve_bytes 256",
            "# TYPE tdmq_backup_build info",
            "# TYPE process_resident_memory_bytes gauge",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from:\n{text}"
            );
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert!(
            text.contains("tdmq_backup_build_info{version=\"")
                && text.contains("daemon=\"ingester\"}"),
            "{text}"
        );
    }

    #[test]
    fn a_rule_gone_from_the_scrape_has_no_series_and_unknown_free_space_is_left_out() {
        let text = render(&Scrape::default());
        assert!(!text.contains("rule=\""), "{text}");
        assert!(!text.contains("spool_disk_free_bytes "), "{text}");
    }
}
