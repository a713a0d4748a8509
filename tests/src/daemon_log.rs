//! Reading the daemons' text logs: what the tests and the bench look for in them. Older builds
//! (the bench's `--bin-dir`) wrote ANSI colour codes into log files, so those are skipped.

use std::net::SocketAddr;

/// `text` without ANSI colour sequences (`ESC [ ... letter`).
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Where each committed segment's bytes came from, from the uploader's log (`source=` of every
/// "segment stored and committed" line): `local_file`, `ingester` or `already_stored`.
pub fn stored_segment_sources(uploader_log: &str) -> Vec<String> {
    uploader_log
        .lines()
        .map(strip_ansi)
        .filter(|line| line.contains("segment stored and committed"))
        .filter_map(|line| {
            let rest = line.split(" source=").nth(1)?;
            Some(
                rest.chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect(),
            )
        })
        .collect()
}

/// The value of `field` on the first line holding `message`: `field=VALUE` in text logs (up to
/// the next space), `"field":"VALUE"` in JSON logs.
pub fn field_of(log: &str, message: &str, field: &str) -> Option<String> {
    let text_key = format!(" {field}=");
    let json_key = format!("\"{field}\":\"");
    log.lines()
        .map(strip_ansi)
        .filter(|line| line.contains(message))
        .find_map(|line| {
            if let Some((_, rest)) = line.split_once(&text_key) {
                return Some(rest.split_whitespace().next().unwrap_or("").to_string());
            }
            let (_, rest) = line.split_once(&json_key)?;
            Some(rest.split('"').next().unwrap_or("").to_string())
        })
}

/// An address as a daemon logs it: `ADDR`, or `Some(ADDR)` (the Debug form of an `Option`).
fn parse_addr(value: &str) -> Option<SocketAddr> {
    let value = value
        .strip_prefix("Some(")
        .and_then(|v| v.strip_suffix(')'))
        .unwrap_or(value);
    value.parse().ok()
}

/// The address a daemon (`tdmq-backup-ingester`, `tdmq-backup-uploader`) reported listening on:
/// `listen=` of its "ingester ready" / "uploader ready" line. Uploaders built before that line
/// existed (the bench's `--bin-dir` may run them) said "uploader started addr=ADDR".
pub fn listen_addr(daemon: &str, log: &str) -> Option<SocketAddr> {
    let short = daemon.strip_prefix("tdmq-backup-").unwrap_or(daemon);
    field_of(log, &format!("{short} ready"), "listen")
        .or_else(|| field_of(log, &format!("{short} started"), "addr"))
        .and_then(|v| parse_addr(&v))
}

/// The address a daemon reported serving `/metrics` on (`metrics=` of "serving /metrics").
pub fn metrics_addr(log: &str) -> Option<SocketAddr> {
    field_of(log, "serving /metrics", "metrics").and_then(|v| parse_addr(&v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_addresses_daemons_report() {
        let ingester = "2026-12-02T08:00:00.1Z  INFO ingester: ingester ready listen=127.0.0.1:4100 \
                        data_dir=/tmp/x version=0.1.0\n\
                        2026-12-02T08:00:00.2Z  INFO ingester: serving /metrics metrics=Some(127.0.0.1:4101)\n";
        assert_eq!(
            listen_addr("tdmq-backup-ingester", ingester),
            Some(SocketAddr::from(([127, 0, 0, 1], 4100)))
        );
        assert_eq!(
            metrics_addr(ingester),
            Some(SocketAddr::from(([127, 0, 0, 1], 4101)))
        );
        assert_eq!(listen_addr("tdmq-backup-uploader", ingester), None);

        let json = r#"{"timestamp":"t","level":"INFO","fields":{"message":"uploader ready","listen":"127.0.0.1:4200","ingester":"http://127.0.0.1:4100"},"target":"uploader"}"#;
        assert_eq!(
            listen_addr("tdmq-backup-uploader", json),
            Some(SocketAddr::from(([127, 0, 0, 1], 4200)))
        );
        let older = "\u{1b}[2m2026\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m uploader: uploader started addr=127.0.0.1:4300 ingester=http://x\n";
        assert_eq!(
            listen_addr("tdmq-backup-uploader", older),
            Some(SocketAddr::from(([127, 0, 0, 1], 4300)))
        );
        assert_eq!(
            field_of(
                " INFO tdmq_backup_relay: relay running url=pulsar://127.0.0.1:4400 broker=127.0.0.1:1",
                "relay running",
                "url"
            )
            .as_deref(),
            Some("pulsar://127.0.0.1:4400")
        );
    }
}
