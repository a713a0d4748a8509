//! What the spool's and the sealer's tests share: a rule, a database, messages, and reading
//! segment files back.

use std::path::Path;
use std::sync::Arc;

use proto::types::{MessageId, RuleConfig, RuleSpecInput};
use tokio::sync::Notify;

use super::db::Database;
use super::{Incoming, RuleSpool};
use crate::error::{IngesterError, Result};

pub(crate) fn rule(max_messages: u64) -> RuleConfig {
    rule_spec(max_messages).validate().expect("valid rule")
}

/// [`rule`] as written, for tests that change a field.
pub(crate) fn rule_spec(max_messages: u64) -> RuleSpecInput {
    RuleSpecInput {
        name: Some("r1".into()),
        service_url: Some("pulsar://127.0.0.1:6650".into()),
        topic: Some("orders".into()),
        subscription: Some("s".into()),
        bucket: Some("bucket-1".into()),
        region: Some("ap-guangzhou".into()),
        window: Some("60s".into()),
        max_messages: Some(max_messages),
        ..RuleSpecInput::default()
    }
}

pub(crate) fn open_spool(
    db: &Arc<Database>,
    dir: &Path,
    max_messages: u64,
) -> Result<Arc<RuleSpool>> {
    open_spool_for(db, dir, &rule(max_messages))
}

pub(crate) fn open_spool_for(
    db: &Arc<Database>,
    dir: &Path,
    rule: &RuleConfig,
) -> Result<Arc<RuleSpool>> {
    let (spool, _) = RuleSpool::open(db, "test0001", dir, rule, Arc::new(Notify::new()))?;
    Ok(spool)
}

pub(crate) fn msg(entry: u64, batch_index: i32, batch_size: i32) -> Incoming {
    Incoming {
        id: MessageId {
            ledger: 1,
            entry,
            partition: -1,
            batch_index,
        },
        topic: "persistent://public/default/orders".into(),
        batch_size,
        publish_time_ms: 1000 + entry,
        producer_name: String::new(),
        body: Vec::new(),
        json_len: 0,
    }
    .with_payload(format!("{{\"e\":{entry},\"b\":{batch_index}}}"))
}

/// The payloads of a segment file's records, a line each.
pub(crate) fn read_payloads(path: &Path) -> String {
    record_fields(path, "payload")
        .iter()
        .map(|payload| format!("{payload}\n"))
        .collect()
}

/// One text field of every record of a segment file, in order.
pub(crate) fn record_fields(path: &Path, field: &str) -> Vec<String> {
    read_file(path)
        .lines()
        .map(|line| {
            let record: serde_json::Value = serde_json::from_str(line).expect("a JSON record");
            record[field].as_str().expect("a text field").to_string()
        })
        .collect()
}

/// Opens the test database. A test that drops its handle and opens the same path again may
/// find the file lock still held for a moment: sled finishes in-flight writes on its own
/// threads after the last handle is dropped (a real restart is a new process).
pub(crate) fn open_db(path: &Path) -> Result<Arc<Database>> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match Database::open(path, 8 << 20) {
            Err(IngesterError::Db(sled::Error::Io(err)))
                if err.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            opened => return opened.map(Arc::new),
        }
    }
}

pub(crate) fn read_file(path: &Path) -> String {
    let bytes = std::fs::read(path).expect("segment file");
    let mut out = String::new();
    std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&bytes[..]), &mut out)
        .expect("gzip");
    out
}

pub(crate) fn segment_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir.join("segments").join("r1"))
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}
