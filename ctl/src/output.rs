//! Rendering: the JSON documents scripts and tests read, and the aligned tables people read.
//!
//! prost's generated types don't derive Serialize, so the JSON is built by hand here. That is
//! also the one place that decides what leaves the process: no renderer has a token to print
//! (the proto `Rule` only carries `has_token`).

use std::time::Duration;

use proto::v1::{LogEntry, Rule, RuleStatus, SegmentInfo, StatusReply, UploaderStatusReply};
use serde_json::{json, Value};

use crate::cli::OutputFormat;

/// What a command produced: one JSON document, and the same for people.
#[derive(Debug)]
pub struct Report {
    pub json: Value,
    pub text: String,
}

impl Report {
    pub fn render(&self, format: OutputFormat) -> String {
        match format {
            // Pretty is still one document; easier to read when a test fails.
            OutputFormat::Json => {
                serde_json::to_string_pretty(&self.json).unwrap_or_else(|_| self.json.to_string())
            }
            OutputFormat::Table => self.text.clone(),
        }
    }
}

// ---------------------------------------------------------------- JSON

/// A message as JSON, with its proto field names (serde derived in the proto crate's build).
fn to_json(message: &impl serde::Serialize) -> Value {
    // Plain structs of strings, numbers and lists: serializing them cannot fail.
    serde_json::to_value(message).unwrap_or(Value::Null)
}

pub fn rule_json(r: &Rule) -> Value {
    to_json(r)
}

pub fn rules_json(rules: &[Rule]) -> Value {
    json!({ "rules": rules.iter().map(rule_json).collect::<Vec<_>>() })
}

pub fn rule_status_json(s: &RuleStatus) -> Value {
    let mut out = to_json(s);
    if !s.broker_backlog_known {
        // 0 would read as "nothing waits": the broker did not say.
        out["broker_backlog_messages"] = Value::Null;
    }
    out
}

/// The ingester part of `status`: its StatusReply without the rules (they get their own key).
pub fn ingester_json(url: &str, s: &StatusReply) -> Value {
    with_reachable(url, to_json(s))
}

fn with_reachable(url: &str, mut reply: Value) -> Value {
    if let Value::Object(fields) = &mut reply {
        fields.insert("reachable".into(), Value::Bool(true));
        fields.insert("url".into(), Value::String(url.into()));
    }
    reply
}

/// The uploader part of `status`: its reply, or why it could not be asked.
pub fn uploader_json(url: &str, reply: &Result<UploaderStatusReply, String>) -> Value {
    match reply {
        Ok(u) => with_reachable(url, to_json(u)),
        Err(error) => json!({ "reachable": false, "url": url, "error": error }),
    }
}

pub fn status_json(
    ingester_url: &str,
    ingester: &StatusReply,
    uploader_url: &str,
    uploader: &Result<UploaderStatusReply, String>,
) -> Value {
    json!({
        "ingester": ingester_json(ingester_url, ingester),
        "uploader": uploader_json(uploader_url, uploader),
        "rules": ingester.rules.iter().map(rule_status_json).collect::<Vec<_>>(),
    })
}

pub fn log_entry_json(e: &LogEntry) -> Value {
    to_json(e)
}

pub fn logs_json(entries: &[LogEntry]) -> Value {
    json!({ "entries": entries.iter().map(log_entry_json).collect::<Vec<_>>() })
}

pub fn segment_json(s: &SegmentInfo) -> Value {
    to_json(s)
}

pub fn segments_json(segments: &[SegmentInfo]) -> Value {
    json!({ "segments": segments.iter().map(segment_json).collect::<Vec<_>>() })
}

// ---------------------------------------------------------------- text

/// Columns padded to their widest cell; empty cells show as `-` so columns stay readable.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let cell = |s: &str| {
        if s.is_empty() {
            "-".to_string()
        } else {
            s.to_string()
        }
    };
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| r.iter().map(|c| cell(c)).collect())
        .collect();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (i, c) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, c) in cells.iter().enumerate() {
            let last = i + 1 == cells.len();
            if last {
                // No trailing spaces on the last column.
                out.push_str(c);
            } else {
                let w = widths.get(i).copied().unwrap_or(0);
                out.push_str(&format!("{c:<w$}  "));
            }
        }
        out
    };
    let mut out = line(headers.to_vec());
    for row in &rows {
        out.push('\n');
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

/// `key: value` lines with the values aligned.
pub fn key_values(pairs: &[(&str, String)]) -> String {
    let width = pairs.iter().map(|(k, _)| k.len() + 1).max().unwrap_or(0);
    pairs
        .iter()
        .map(|(k, v)| {
            let key = format!("{k}:");
            let value = if v.is_empty() { "-" } else { v.as_str() };
            format!("{key:<width$} {value}")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Sizes as the contract writes them: powers of 1000 (`500.0 MB`).
pub fn size(bytes: u64) -> String {
    // bytesize 1.x's flag is inverted from its name: `false` gives KB/MB/GB (powers of 1000).
    // A test pins the output so an upgrade that flips it is noticed.
    bytesize::ByteSize(bytes).to_string_as(false)
}

pub fn secs(secs: u64) -> String {
    humantime::format_duration(Duration::from_secs(secs)).to_string()
}

/// Milliseconds, shown to the second (sub-second precision is noise in a table).
pub fn millis(ms: u64) -> String {
    if ms == 0 {
        return "0s".into();
    }
    if ms < 1000 {
        return format!("{ms}ms");
    }
    secs(ms / 1000)
}

/// The LAST-ERROR cell: how long ago, then the error, so an old error next to `running` reads
/// as old.
fn last_error_cell(error: &str, at: &str, now: chrono::DateTime<chrono::Utc>) -> String {
    if error.is_empty() {
        return String::new();
    }
    match chrono::DateTime::parse_from_rfc3339(at) {
        Ok(at) => {
            let ago = (now - at.with_timezone(&chrono::Utc)).num_seconds().max(0);
            format!("{} ago: {}", secs(ago.unsigned_abs()), clip(error, 50))
        }
        Err(_) => clip(error, 60),
    }
}

/// Shortens long free text (errors, keys) for a table cell; JSON always has it whole.
pub fn clip(text: &str, max: usize) -> String {
    let text = crate::client::one_line(text);
    if text.chars().count() <= max {
        return text;
    }
    let mut out: String = text.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

pub fn rule_state(r: &Rule) -> &'static str {
    if r.paused {
        "paused"
    } else {
        "active"
    }
}

pub fn rule_text(r: &Rule) -> String {
    let window = secs(r.window_secs);
    key_values(&[
        ("name", r.name.clone()),
        ("state", rule_state(r).to_string()),
        ("service_url", r.service_url.clone()),
        ("topic", r.topic.clone()),
        ("subscription", r.subscription.clone()),
        ("subscription_type", r.subscription_type.clone()),
        ("bucket", r.bucket.clone()),
        ("region", r.region.clone()),
        ("endpoint", r.endpoint.clone()),
        ("prefix", r.prefix.clone()),
        ("window", window),
        ("max_messages", r.max_messages.to_string()),
        (
            "max_bytes",
            format!("{} ({} bytes)", size(r.max_bytes), r.max_bytes),
        ),
        ("start", r.start.clone()),
        ("cluster", r.cluster.clone()),
        ("role", r.role.clone()),
        (
            "token",
            if r.has_token { "set" } else { "none" }.to_string(),
        ),
        ("compression", r.compression.clone()),
        ("created_at", r.created_at.clone()),
        ("updated_at", r.updated_at.clone()),
    ])
}

/// `rule list`. `states` holds the live state per rule when the ingester's status answered.
pub fn rules_text(rules: &[Rule], states: &[RuleStatus]) -> String {
    if rules.is_empty() {
        return "no rules".into();
    }
    let rows: Vec<Vec<String>> = rules
        .iter()
        .map(|r| {
            let state = states
                .iter()
                .find(|s| s.name == r.name)
                .map(|s| s.state.clone())
                .unwrap_or_else(|| rule_state(r).to_string());
            vec![
                r.name.clone(),
                r.topic.clone(),
                r.subscription.clone(),
                r.bucket.clone(),
                r.prefix.clone(),
                secs(r.window_secs),
                state,
            ]
        })
        .collect();
    table(
        &[
            "NAME",
            "TOPIC",
            "SUBSCRIPTION",
            "BUCKET",
            "PREFIX",
            "WINDOW",
            "STATE",
        ],
        &rows,
    )
}

pub fn status_text(
    ingester_url: &str,
    ingester: &StatusReply,
    uploader_url: &str,
    uploader: &Result<UploaderStatusReply, String>,
) -> String {
    let mut lines = Vec::new();
    let mut ing = format!(
        "ingester {ingester_url}: version {}, up {}",
        ingester.version,
        secs(ingester.uptime_secs)
    );
    if ingester.spool_disk_full {
        ing.push_str(", SPOOL DISK FULL (consumption paused)");
    }
    lines.push(ing);
    match uploader {
        Ok(u) => {
            let mut up = format!(
                "uploader {uploader_url}: version {}, up {}, store {}, uploaded {} segments ({}), \
                 {} failures, {} in flight",
                u.version,
                secs(u.uptime_secs),
                if u.store.is_empty() { "-" } else { &u.store },
                u.segments_uploaded,
                size(u.bytes_uploaded),
                u.upload_failures,
                u.in_flight.len()
            );
            if !u.ingester_reachable {
                up.push_str(&format!(
                    "; cannot reach the ingester: {}",
                    clip(&u.ingester_error, 120)
                ));
            }
            if !u.last_error.is_empty() {
                up.push_str(&format!(
                    "; last error {}: {}",
                    u.last_error_at,
                    clip(&u.last_error, 120)
                ));
            }
            lines.push(up);
        }
        // The error already says "cannot reach ..." or "refused the call".
        Err(e) => lines.push(format!("uploader {uploader_url}: {e}")),
    }
    lines.push(String::new());
    if ingester.rules.is_empty() {
        lines.push("no rules".into());
        return lines.join("\n");
    }
    let rows: Vec<Vec<String>> = ingester
        .rules
        .iter()
        .map(|s| {
            vec![
                s.name.clone(),
                s.state.clone(),
                if s.consumer_connected { "yes" } else { "no" }.into(),
                s.messages_consumed.to_string(),
                format!("{} ({})", s.spooled_messages, size(s.spooled_bytes)),
                s.sealed_segments.to_string(),
                clip(&s.last_object_key, 80),
                last_error_cell(&s.last_error, &s.last_error_at, chrono::Utc::now()),
                millis(s.backlog_age_ms),
            ]
        })
        .collect();
    lines.push(table(
        &[
            "NAME",
            "STATE",
            "CONNECTED",
            "CONSUMED",
            "SPOOLED",
            "SEALED",
            "LAST-OBJECT",
            "LAST-ERROR",
            "BACKLOG-AGE",
        ],
        &rows,
    ));
    // Things an operator must act on, which don't fit a column.
    for s in &ingester.rules {
        if !s.state_reason.is_empty() {
            lines.push(format!(
                "{}: {}: {}",
                s.name,
                s.state,
                // A blocked rule's reason ends with the command that passes the entry.
                clip(
                    &s.state_reason,
                    if s.state == "blocked" { 600 } else { 200 }
                )
            ));
        }
        // A count since the ingester started, not a segment state: a quarantined segment is
        // sealed again from the spool (`segments` shows it sealing) and uploaded as usual.
        if s.quarantined_segments > 0 {
            lines.push(format!(
                "{}: {} damaged segment file(s) set aside since the ingester started, each written again from the spool (see `tdmq-backup logs {} --failed`; check the disk)",
                s.name, s.quarantined_segments, s.name
            ));
        }
    }
    lines.join("\n")
}

const LOG_HEADERS: [&str; 5] = ["AT", "KIND", "MESSAGES", "BYTES", "KEY/ERROR"];

fn log_row(e: &LogEntry) -> Vec<String> {
    let detail = if e.failed || e.object_key.is_empty() {
        clip(&e.message, 120)
    } else {
        e.object_key.clone()
    };
    vec![
        e.at.clone(),
        e.kind.clone(),
        if e.messages == 0 {
            String::new()
        } else {
            e.messages.to_string()
        },
        if e.bytes == 0 {
            String::new()
        } else {
            size(e.bytes)
        },
        detail,
    ]
}

pub fn logs_text(entries: &[LogEntry]) -> String {
    if entries.is_empty() {
        return "no log entries".into();
    }
    let rows: Vec<Vec<String>> = entries.iter().map(log_row).collect();
    table(&LOG_HEADERS, &rows)
}

/// Column widths for `logs --follow`, which prints rows before it has seen them all: wide
/// enough for the usual values (an RFC 3339 time, the history's kinds, sizes), never cut.
const FOLLOW_WIDTHS: [usize; 4] = [24, 14, 8, 9];

fn fixed_line(cells: &[String]) -> String {
    let mut out = String::new();
    for (i, c) in cells.iter().enumerate() {
        let c = if c.is_empty() { "-" } else { c.as_str() };
        match FOLLOW_WIDTHS.get(i) {
            Some(w) => out.push_str(&format!("{c:<w$}  ")),
            None => out.push_str(c),
        }
    }
    out.trim_end().to_string()
}

/// The header `logs --follow` prints once.
pub fn log_follow_header() -> String {
    fixed_line(&LOG_HEADERS.map(String::from))
}

/// One entry as a `logs --follow` line, aligned with [`log_follow_header`].
pub fn log_follow_line(e: &LogEntry) -> String {
    fixed_line(&log_row(e))
}

pub fn segments_text(segments: &[SegmentInfo]) -> String {
    if segments.is_empty() {
        return "no segments".into();
    }
    let rows: Vec<Vec<String>> = segments
        .iter()
        .map(|s| {
            vec![
                s.segment_no.to_string(),
                s.state.clone(),
                s.window_start.clone(),
                s.messages.to_string(),
                size(s.record_bytes),
                s.first_message_id.clone(),
                s.last_message_id.clone(),
                s.object_key.clone(),
            ]
        })
        .collect();
    table(
        &[
            "NO", "STATE", "WINDOW", "MESSAGES", "BYTES", "FIRST-ID", "LAST-ID", "KEY",
        ],
        &rows,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_error_says_how_old_it_is() {
        let now = chrono::DateTime::parse_from_rfc3339("2026-12-02T10:00:00Z")
            .expect("a time")
            .with_timezone(&chrono::Utc);
        assert_eq!(
            last_error_cell("broker down", "2026-12-02T09:57:00.000Z", now),
            "3m ago: broker down"
        );
        assert_eq!(last_error_cell("", "2026-12-02T09:57:00.000Z", now), "");
        assert_eq!(last_error_cell("no time", "", now), "no time");
    }

    fn sample_rule() -> Rule {
        Rule {
            name: "orders".into(),
            service_url: "pulsar://10.0.0.5:6650".into(),
            topic: "persistent://public/default/orders".into(),
            subscription: "backup".into(),
            bucket: "backup-1250000000".into(),
            region: "ap-guangzhou".into(),
            prefix: "logs/".into(),
            window_secs: 300,
            max_messages: 5000,
            max_bytes: 500_000_000,
            start: "earliest".into(),
            has_token: true,
            subscription_type: "failover".into(),
            compression: "gzip".into(),
            ..Rule::default()
        }
    }

    /// No key anywhere in the document may be a token (only `has_token` says whether one is set).
    fn assert_no_token_key(v: &Value) {
        match v {
            Value::Object(map) => {
                for (k, v) in map {
                    assert!(k == "has_token" || !k.contains("token"), "key {k:?}");
                    assert_no_token_key(v);
                }
            }
            Value::Array(items) => items.iter().for_each(assert_no_token_key),
            _ => {}
        }
    }

    #[test]
    fn rule_json_has_proto_fields_and_no_token() {
        let v = rule_json(&sample_rule());
        assert_eq!(v["name"], "orders");
        assert_eq!(v["window_secs"], 300);
        assert_eq!(v["max_bytes"], 500_000_000u64);
        assert_eq!(v["has_token"], true);
        assert_eq!(v["paused"], false);
        assert_no_token_key(&v);
        let list = rules_json(&[sample_rule(), sample_rule()]);
        assert_eq!(list["rules"].as_array().map(Vec::len), Some(2));
        assert_no_token_key(&list);
        let text = rule_text(&sample_rule());
        assert!(text.contains("token:") && text.contains("set"));
    }

    #[test]
    fn status_json_shapes() {
        let reply = StatusReply {
            rules: vec![RuleStatus {
                name: "orders".into(),
                state: "running".into(),
                consumer_connected: true,
                messages_consumed: 42,
                ..RuleStatus::default()
            }],
            version: "0.1.0".into(),
            uptime_secs: 7,
            spool_disk_full: false,
        };
        let down: Result<UploaderStatusReply, String> =
            Err("cannot reach the uploader at http://u: connection refused".into());
        let v = status_json("http://i", &reply, "http://u", &down);
        assert_eq!(v["ingester"]["version"], "0.1.0");
        assert!(v["ingester"].get("rules").is_none());
        assert_eq!(v["uploader"]["reachable"], false);
        assert_eq!(
            v["uploader"]["error"],
            "cannot reach the uploader at http://u: connection refused"
        );
        assert_eq!(v["rules"][0]["messages_consumed"], 42);
        assert_no_token_key(&v);

        let up: Result<UploaderStatusReply, String> = Ok(UploaderStatusReply {
            version: "0.1.0".into(),
            segments_uploaded: 3,
            in_flight: vec![proto::v1::UploadInFlight {
                rule: "orders".into(),
                segment_no: 9,
                ..proto::v1::UploadInFlight::default()
            }],
            ..UploaderStatusReply::default()
        });
        let v = status_json("http://i", &reply, "http://u", &up);
        assert_eq!(v["uploader"]["reachable"], true);
        assert_eq!(v["uploader"]["segments_uploaded"], 3);
        assert_eq!(v["uploader"]["in_flight"][0]["segment_no"], 9);
        assert_no_token_key(&v);
        let text = status_text("http://i", &reply, "http://u", &down);
        assert!(text.contains("uploader http://u: cannot reach the uploader"));
        assert!(text.contains("BACKLOG-AGE"));
    }

    #[test]
    fn logs_and_segments_json() {
        let v = logs_json(&[LogEntry {
            kind: "stored".into(),
            messages: 10,
            object_key: "k".into(),
            ..LogEntry::default()
        }]);
        assert_eq!(v["entries"][0]["kind"], "stored");
        assert_eq!(v["entries"][0]["messages"], 10);
        let v = segments_json(&[SegmentInfo {
            segment_no: 4,
            state: "sealed".into(),
            ..SegmentInfo::default()
        }]);
        assert_eq!(v["segments"][0]["segment_no"], 4);
        assert_eq!(v["segments"][0]["state"], "sealed");
    }

    #[test]
    fn tables_align_columns() {
        let t = table(
            &["A", "LONG-HEADER", "C"],
            &[
                vec!["xxxx".into(), "".into(), "z".into()],
                vec!["y".into(), "b".into(), "".into()],
            ],
        );
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "A     LONG-HEADER  C");
        assert_eq!(lines[1], "xxxx  -            z");
        assert_eq!(lines[2], "y     b            -");
        assert_eq!(size(500_000_000), "500.0 MB");
        assert_eq!(secs(300), "5m");
        assert_eq!(millis(90_500), "1m 30s");
    }
}
