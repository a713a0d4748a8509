//! Rendering: the JSON documents scripts and tests read, and the aligned tables people read.
//!
//! prost's generated types don't derive Serialize, so the JSON is built by hand here. That is
//! also the one place that decides what leaves the process: no renderer has a token to print
//! (the proto `Rule` only carries `has_token`).

use std::time::Duration;

use proto::v1::{LogEntry, Rule, RuleStatus, SegmentInfo, StatusReply, UploaderStatusReply};
use serde_json::{json, Value};

use crate::cli::OutputFormat;
// Free text on one line; tables shorten it to fit (JSON always has it whole).
use crate::client::one_line;
use crate::table::{self, Column, Layout};

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
            // `rule show -o toml` puts the rule file in `text`; `execute` refuses other commands.
            OutputFormat::Table | OutputFormat::Wide | OutputFormat::Toml => self.text.clone(),
        }
    }
}

// ---------------------------------------------------------------- JSON

/// A message as JSON, with its proto field names (serde derived in the proto crate's build).
fn to_json(message: &impl serde::Serialize) -> Value {
    // Plain structs of strings, numbers and lists: serializing them cannot fail.
    serde_json::to_value(message).unwrap_or(Value::Null)
}

/// A rule as JSON: its proto fields plus `state`, the live state `status` shows.
pub fn rule_json(r: &Rule, state: &str) -> Value {
    let mut out = to_json(r);
    if let Value::Object(fields) = &mut out {
        fields.insert("state".into(), Value::String(state.into()));
    }
    out
}

/// The rule as a rule file: every key `--from-file` reads, so `rule show NAME -o toml > F` and
/// `rule apply -f F` round-trip. The token is never in it.
pub fn rule_toml(r: &Rule) -> String {
    let spec = proto::types::RuleSpecInput::from(r);
    // Plain strings and numbers: serializing cannot fail.
    let body = toml::to_string(&spec).unwrap_or_default();
    let token = if r.has_token {
        "# The rule has a Pulsar token; it is never shown. To change it, add token_file or token_env.\n"
    } else {
        ""
    };
    format!("# tdmq-backup rule {}\n{token}{}", r.name, body.trim_end())
}

pub fn rules_json(rules: &[Rule], states: &[RuleStatus]) -> Value {
    let rules: Vec<Value> = rules
        .iter()
        .map(|r| rule_json(r, &rule_state(r, states)))
        .collect();
    json!({ "rules": rules })
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
            format!("{} ago: {}", secs(ago.unsigned_abs()), one_line(error))
        }
        Err(_) => one_line(error),
    }
}

/// The rule's state in `status`'s words (running, connecting, paused, blocked, error...). If the
/// ingester did not report it, only `paused` is known for sure; otherwise `unknown`.
pub fn rule_state(r: &Rule, states: &[RuleStatus]) -> String {
    match states.iter().find(|s| s.name == r.name) {
        Some(s) if !s.state.is_empty() => s.state.clone(),
        _ if r.paused => "paused".into(),
        _ => "unknown".into(),
    }
}

pub fn rule_text(r: &Rule, state: &str) -> String {
    let window = secs(r.window_secs);
    key_values(&[
        ("name", r.name.clone()),
        ("state", state.to_string()),
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
        (
            "compression_level",
            if r.compression_level == 0 {
                "-".to_string()
            } else {
                r.compression_level.to_string()
            },
        ),
        ("layout", r.layout.clone()),
        (
            "format",
            if r.format.is_empty() {
                "jsonl".to_string()
            } else {
                r.format.clone()
            },
        ),
        ("fence", r.fence.to_string()),
        ("created_at", r.created_at.clone()),
        ("updated_at", r.updated_at.clone()),
    ])
}

/// `rule list`. `states` holds the live state per rule when the ingester's status answered.
pub fn rules_text(rules: &[Rule], states: &[RuleStatus], layout: &Layout) -> String {
    if rules.is_empty() {
        return "no rules".into();
    }
    let rows: Vec<Vec<String>> = rules
        .iter()
        .map(|r| {
            let state = rule_state(r, states);
            // `persistent://` is what a topic is unless it says otherwise: room for the name.
            let topic = match r.topic.strip_prefix("persistent://") {
                Some(short) if !layout.wide => short.to_string(),
                _ => r.topic.clone(),
            };
            vec![
                r.name.clone(),
                state,
                topic,
                r.subscription.clone(),
                r.bucket.clone(),
                r.prefix.clone(),
                secs(r.window_secs),
                objects_cell(r),
            ]
        })
        .collect();
    table::render(&RULE_COLUMNS, &rows, layout)
}

/// How a rule writes its objects, in a few characters: `gzip:1 plain`, `zstd:3 hive`,
/// `none plain`, `parquet zstd:3 hive` (JSON Lines goes without saying).
fn objects_cell(r: &Rule) -> String {
    let compression = if r.compression.is_empty() {
        "gzip"
    } else {
        r.compression.as_str()
    };
    let layout = if r.layout.is_empty() {
        "plain"
    } else {
        r.layout.as_str()
    };
    let format = if r.format.is_empty() || r.format == "jsonl" {
        String::new()
    } else {
        format!("{} ", r.format)
    };
    let fence = if r.fence { " fenced" } else { "" };
    if r.compression_level == 0 {
        format!("{format}{compression} {layout}{fence}")
    } else {
        format!(
            "{format}{compression}:{} {layout}{fence}",
            r.compression_level
        )
    }
}

pub fn status_text(
    ingester_url: &str,
    ingester: &StatusReply,
    uploader_url: &str,
    uploader: &Result<UploaderStatusReply, String>,
    layout: &Layout,
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
            // Two lines, so each fits 80 columns with usual URLs.
            let mut up = format!(
                "uploader {uploader_url}: version {}, up {}, store {}\n  uploaded {} segments ({}), \
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
                    "\n  cannot reach the ingester: {}",
                    one_line(&u.ingester_error)
                ));
            }
            if !u.last_error.is_empty() {
                up.push_str(&format!(
                    "\n  last error {}: {}",
                    u.last_error_at,
                    one_line(&u.last_error)
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
                s.spooled_messages.to_string(),
                size(s.spooled_bytes),
                s.sealed_segments.to_string(),
                millis(s.backlog_age_ms),
                s.last_object_key.clone(),
                last_error_cell(&s.last_error, &s.last_error_at, chrono::Utc::now()),
            ]
        })
        .collect();
    lines.push(table::render(&STATUS_COLUMNS, &rows, layout));
    // Things an operator must act on, which don't fit a column.
    for s in &ingester.rules {
        if !s.state_reason.is_empty() {
            lines.push(format!(
                "{}: {}: {}",
                s.name,
                s.state,
                // Whole: a blocked rule's reason ends with the command that passes the entry.
                one_line(&s.state_reason)
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

const LOG_COLUMNS: [Column; 5] = [
    Column::keep("AT"),
    Column::keep("KIND"),
    Column::keep("MESSAGES"),
    Column::keep("BYTES"),
    // Keys lose their middle to fit; an error is always whole (`render_rows`).
    Column::middle("KEY/ERROR"),
];
const RULE_COLUMNS: [Column; 8] = [
    Column::keep("NAME"),
    Column::keep("STATE"),
    Column::middle("TOPIC"),
    Column::keep("SUBSCRIPTION").wide(),
    Column::keep("BUCKET"),
    Column::keep("PREFIX").wide(),
    Column::keep("WINDOW"),
    Column::keep("OBJECTS").wide(),
];
const STATUS_COLUMNS: [Column; 10] = [
    Column::keep("NAME"),
    Column::keep("STATE"),
    Column::keep("CONNECTED").wide(),
    Column::keep("CONSUMED"),
    Column::keep("SPOOLED"),
    Column::keep("SPOOLED-BYTES").wide(),
    Column::keep("SEALED"),
    Column::keep("BACKLOG-AGE"),
    Column::middle("LAST-OBJECT").wide(),
    Column::end("LAST-ERROR"),
];
const SEGMENT_COLUMNS: [Column; 8] = [
    Column::keep("NO"),
    Column::keep("STATE"),
    Column::keep("WINDOW"),
    Column::keep("MESSAGES"),
    Column::keep("BYTES"),
    Column::keep("FIRST-ID").wide(),
    Column::keep("LAST-ID").wide(),
    Column::middle("KEY"),
];

/// `2026-12-02T11:13:03.789Z` as `2026-12-02T11:13:03Z`: milliseconds are noise in a table.
fn to_the_second(at: &str) -> String {
    match (at.find('.'), at.ends_with('Z')) {
        (Some(dot), true) => format!("{}Z", &at[..dot]),
        _ => at.to_string(),
    }
}

/// The entry's last cell is its message (an error, a state change), not an object key.
fn is_error(e: &LogEntry) -> bool {
    e.failed || e.object_key.is_empty()
}

fn log_row(e: &LogEntry) -> Vec<String> {
    let detail = if is_error(e) {
        one_line(&e.message)
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

pub fn logs_text(entries: &[LogEntry], layout: &Layout) -> String {
    if entries.is_empty() {
        return "no log entries".into();
    }
    let mut cells: Vec<Vec<String>> = entries.iter().map(log_row).collect();
    if !layout.wide {
        for row in &mut cells {
            if let Some(at) = row.first_mut() {
                *at = to_the_second(at);
            }
        }
    }
    let rows: Vec<(&[String], bool)> = entries
        .iter()
        .zip(&cells)
        .map(|(e, row)| (row.as_slice(), is_error(e)))
        .collect();
    table::render_rows(&LOG_COLUMNS, &rows, layout)
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
    fixed_line(&LOG_COLUMNS.map(|c| c.header.to_string()))
}

/// One entry as a `logs --follow` line, aligned with [`log_follow_header`].
pub fn log_follow_line(e: &LogEntry) -> String {
    fixed_line(&log_row(e))
}

pub fn segments_text(segments: &[SegmentInfo], layout: &Layout) -> String {
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
    table::render(&SEGMENT_COLUMNS, &rows, layout)
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
            compression_level: 1,
            layout: "plain".into(),
            format: "jsonl".into(),
            ..Rule::default()
        }
    }

    #[test]
    fn rule_toml_round_trips_through_a_rule_file() {
        let rule = sample_rule();
        let text = rule_toml(&rule);
        assert!(text.contains("never shown"), "{text}");
        let (spec, token) =
            crate::commands::rule::parse_rule_file(&text, std::path::Path::new("orders.toml"))
                .expect("parses");
        assert!(token.is_none());
        let again = spec
            .validate()
            .expect("valid")
            .to_rule(proto::types::rule::RuleState {
                has_token: true,
                ..Default::default()
            });
        // Everything but the timestamps, which the ingester sets.
        let stamped = Rule {
            created_at: again.created_at.clone(),
            updated_at: again.updated_at.clone(),
            ..rule
        };
        assert_eq!(again, stamped);
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
        let v = rule_json(&sample_rule(), "running");
        assert_eq!(v["name"], "orders");
        assert_eq!(v["state"], "running");
        assert_eq!(v["window_secs"], 300);
        assert_eq!(v["max_bytes"], 500_000_000u64);
        assert_eq!(v["has_token"], true);
        assert_eq!(v["paused"], false);
        assert_no_token_key(&v);
        let live = RuleStatus {
            name: "orders".into(),
            state: "blocked".into(),
            ..RuleStatus::default()
        };
        let list = rules_json(&[sample_rule(), sample_rule()], &[live]);
        assert_eq!(list["rules"].as_array().map(Vec::len), Some(2));
        assert_eq!(list["rules"][0]["state"], "blocked");
        let unknown = rules_json(&[sample_rule()], &[]);
        assert_eq!(unknown["rules"][0]["state"], "unknown");
        assert_no_token_key(&list);
        let text = rule_text(&sample_rule(), "running");
        assert!(text.contains("token:") && text.contains("set"));
        let zstd_hive = Rule {
            compression: "zstd".into(),
            compression_level: 7,
            layout: "hive".into(),
            ..sample_rule()
        };
        let v = rule_json(&zstd_hive, "running");
        assert_eq!(
            (&v["compression"], &v["compression_level"], &v["layout"]),
            (&json!("zstd"), &json!(7), &json!("hive"))
        );
        let text = rule_text(&zstd_hive, "running");
        assert!(
            text.contains("compression_level:") && text.contains("layout:"),
            "{text}"
        );
        assert_eq!(objects_cell(&zstd_hive), "zstd:7 hive");
        assert_eq!(objects_cell(&sample_rule()), "gzip:1 plain");
        let parquet = Rule {
            format: "parquet".into(),
            compression_level: 3,
            ..zstd_hive
        };
        assert_eq!(objects_cell(&parquet), "parquet zstd:3 hive");
        assert!(rule_text(&parquet, "running").contains("parquet"));
        assert_eq!(rule_json(&parquet, "running")["format"], json!("parquet"));
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
        let text = status_text("http://i", &reply, "http://u", &down, &Layout::default());
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
    fn sizes_and_durations() {
        assert_eq!(size(500_000_000), "500.0 MB");
        assert_eq!(secs(300), "5m");
        assert_eq!(millis(90_500), "1m 30s");
    }
}
