//! The daemons' directories carry a format stamp: a directory written before stamps existed
//! (format 1, the committed fixture `tests/fixtures/ingester-data-v1`, made by the build before
//! the stamp) is opened, stamped and backed up whole; one of a newer format is refused with what
//! to do, and left as it was.

use std::path::Path;
use std::time::Duration;

use harness::read_all;

use crate::util::Stack;

/// What the fixture holds: rule `fixture-orders` (bucket `fixture-bucket`, its broker long
/// gone), segments 0 and 1 sealed with 50 messages each, segment 2 open with 20.
const FIXTURE_RULE: &str = "fixture-orders";
const FIXTURE_BUCKET: &str = "fixture-bucket";
const FIXTURE_MESSAGES: usize = 120;

fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_dir_from_before_format_stamps_is_stamped_and_backed_up_whole() -> anyhow::Result<()>
{
    let mut stack = Stack::builder()
        .extra_bucket(FIXTURE_BUCKET)
        .services()
        .await?;
    let data_dir = stack.path("ingester");
    copy_dir(&fixture("ingester-data-v1"), &data_dir)?;
    assert!(
        !data_dir.join("format.json").exists(),
        "the fixture predates the stamp"
    );
    stack.start_ingester().await?;
    stack.start_uploader().await?;

    let stamp: serde_json::Value =
        serde_json::from_slice(&std::fs::read(data_dir.join("format.json"))?)?;
    assert_eq!(stamp["kind"], "ingester-data");
    assert_eq!(stamp["version"], 1);

    // The open segment is sealed on request; the sealed ones go on their own.
    stack.ctl_json(&["rule", "flush", FIXTURE_RULE])?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let objects = read_all(&stack.s3.client(), FIXTURE_BUCKET, "").await?;
        let records: usize = objects.iter().map(|o| o.records.len()).sum();
        if records == FIXTURE_MESSAGES {
            assert_eq!(objects.len(), 3, "one object per segment");
            let mut ids: Vec<String> = objects
                .iter()
                .flat_map(|o| o.records.iter())
                .filter_map(|r| r["message_id"].as_str().map(String::from))
                .collect();
            ids.sort();
            ids.dedup();
            assert_eq!(ids.len(), FIXTURE_MESSAGES, "every message once");
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!(
                "{records}/{FIXTURE_MESSAGES} of the fixture's messages stored after 60 s; uploader log:\n{}",
                stack.log_tail("uploader.log")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_dir_of_a_newer_format_is_refused_saying_what_to_run() -> anyhow::Result<()> {
    let stack = Stack::builder().services().await?;
    let data_dir = stack.path("ingester");
    std::fs::create_dir_all(&data_dir)?;
    let newer = r#"{"kind":"ingester-data","version":99,"written_by":"9.0.0"}"#;
    std::fs::write(data_dir.join("format.json"), newer)?;
    let mut ingester = stack.spawn_ingester("ingester", 0)?;
    let status = ingester
        .wait_timeout_async(Duration::from_secs(30))
        .await?
        .ok_or_else(|| anyhow::anyhow!("the ingester kept running on a newer data_dir"))?;
    assert_eq!(status.code(), Some(1));
    let log = ingester.log();
    let line = log
        .lines()
        .find(|l| l.starts_with("error: "))
        .ok_or_else(|| anyhow::anyhow!("no error line in:\n{log}"))?;
    assert!(line.contains("data_dir"), "{line}");
    assert!(
        line.contains("written in format 99 by tdmq-backup 9.0.0"),
        "{line}"
    );
    assert!(line.contains("run tdmq-backup 9.0.0 or newer"), "{line}");
    // Nothing was opened or rewritten.
    assert_eq!(
        std::fs::read_to_string(data_dir.join("format.json"))?,
        newer
    );
    let entries: Vec<_> = std::fs::read_dir(&data_dir)?.collect();
    assert_eq!(entries.len(), 1, "only the stamp: {entries:?}");
    Ok(())
}
