//! Guarantee 4 on a really full disk, not a quota: the ingester's data_dir is a small tmpfs.
//!
//! - The uploader is away while three times the disk's size is produced, then comes back: the
//!   ingester must pause before the disk is too full to seal and commit, and go on by itself.
//! - Another writer fills the disk to the last byte under a running ingester: its database fails
//!   writes (sled keeps that error until reopened); once the space is back it must recover.
//!
//! Either way: every message stored exactly once, the subscription drained, and the same
//! ingester process throughout.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use harness::{assert_subscription_drained, check_exactly_once, produce, SampleMessage};
use rand::{Rng, SeedableRng};

use crate::util::{unique_topic, Extra, Stack};

const RULE: &str = "fulldisk";
const DISK: &str = "48m";
/// 1500 incompressible messages of 100 KB: 150 MB, about three times the disk.
const MESSAGES: usize = 1_500;
const PAYLOAD_BYTES: usize = 100_000;

/// A tmpfs mounted on a directory for one test; unmounted on drop, even when the test fails
/// (lazily if a process still has files open there, so the directory can be removed).
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    /// `None` when this machine does not let the test mount (not root, no CAP_SYS_ADMIN).
    fn mount(dir: &Path, size: &str) -> anyhow::Result<Option<Tmpfs>> {
        std::fs::create_dir_all(dir)?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .context("running mount")?;
        if !out.status.success() {
            println!(
                "SKIPPED: cannot mount a {size} tmpfs on {} (this test needs root): {}",
                dir.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return Ok(None);
        }
        Ok(Some(Tmpfs {
            dir: dir.to_path_buf(),
        }))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = Command::new("umount")
            .arg(&self.dir)
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
    }
}

/// `n` messages of random (incompressible) bytes, each payload unique.
fn random_messages(n: usize, seed: u64) -> Vec<SampleMessage> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let mut payload = vec![0u8; PAYLOAD_BYTES];
            rng.fill(payload.as_mut_slice());
            SampleMessage {
                payload,
                key: None,
                properties: Default::default(),
                event_time: None,
                ..Default::default()
            }
        })
        .collect()
}

fn files_ending(dir: &Path, suffix: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.to_string_lossy().ends_with(suffix) {
                found.push(path.display().to_string());
            }
        }
    }
    found
}

/// Bytes available on the filesystem of `dir`, as `df` says.
fn available(dir: &Path) -> anyhow::Result<u64> {
    let out = Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(dir)
        .output()
        .context("running df")?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .nth(1)
        .and_then(|line| line.trim().parse().ok())
        .with_context(|| format!("df printed {text:?}"))
}

/// Writes zeros to `path` until the filesystem refuses more; returns the bytes written.
fn fill(path: &Path) -> anyhow::Result<u64> {
    use std::io::Write;
    let mut file = std::fs::File::create(path)?;
    let chunk = vec![0u8; 64 * 1024];
    let mut written = 0u64;
    loop {
        match file.write(&chunk) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(err) if err.raw_os_error() == Some(28) => break,
            Err(err) => return Err(err.into()),
        }
    }
    // What is left is less than a page: the ingester's next write that needs one fails.
    let _ = file.sync_all();
    Ok(written)
}

/// Both scenarios: an ingester whose data_dir is a tmpfs of `DISK` (keeping 8 MB in reserve
/// besides what sealing needs), and a rule `RULE` on a fresh topic with one-hour windows.
struct FullDisk {
    // Declared first, so dropped first: a failing test unmounts before its daemons go.
    disk: Tmpfs,
    stack: Stack,
    data_dir: PathBuf,
    ingester_pid: Option<u32>,
    /// The topic's full name.
    topic: String,
}

impl FullDisk {
    /// `None` (the test is skipped) when this machine does not let the test mount.
    async fn start(stem: &str, max_bytes: &str) -> anyhow::Result<Option<FullDisk>> {
        let mut stack = Stack::services().await?;
        let data_dir = stack.path("ingester");
        let Some(disk) = Tmpfs::mount(&data_dir, DISK)? else {
            return Ok(None);
        };
        stack.ingester_extra = Extra {
            // The disk is tiny: keep a few MB besides what sealing needs.
            args: vec!["--disk-reserve-bytes".into(), "8MB".into()],
            env: Vec::new(),
        };
        stack.start_ingester().await?;
        let ingester_pid = stack.ingester.as_ref().map(|d| d.pid());
        let topic = unique_topic(stem);
        stack.create_rule(RULE, &topic, &["--max-bytes", max_bytes, "--window", "1h"])?;
        Ok(Some(FullDisk {
            disk,
            stack,
            data_dir,
            ingester_pid,
            topic: format!("persistent://public/default/{topic}"),
        }))
    }

    /// The same ingester did it all: never restarted, still running.
    fn assert_same_ingester(&mut self) -> anyhow::Result<()> {
        let ingester = self.stack.ingester.as_mut().context("the ingester")?;
        assert_eq!(Some(ingester.pid()), self.ingester_pid);
        if let Some(exit) = ingester.try_status()? {
            bail!(
                "the ingester exited ({exit}):\n{}",
                self.stack.log_tail("ingester.log")
            );
        }
        Ok(())
    }

    /// No temporary file left; then, with the ingester gone and the disk unmounted, nothing
    /// left unacknowledged on the subscription.
    async fn finish(mut self) -> anyhow::Result<()> {
        let leftovers = files_ending(&self.data_dir, ".tmp");
        assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
        if let Some(mut ingester) = self.stack.ingester.take() {
            ingester.kill9()?;
        }
        drop(self.disk);
        let left = assert_subscription_drained(
            &self.stack.pulsar.url(),
            &self.topic,
            "tdmq-backup",
            Duration::from_secs(3),
        )
        .await?;
        assert_eq!(left, 0, "messages left unacknowledged on the subscription");
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_pauses_consumption_and_recovers_without_a_restart() -> anyhow::Result<()> {
    let started = Instant::now();
    // Segments of about 5 MB of JSON lines (3.75 MB of payload): several of them fill the disk.
    let Some(mut run) = FullDisk::start("fulldisk", "5MB").await? else {
        return Ok(());
    };
    let messages = random_messages(MESSAGES, 4711);
    let producer = {
        let (url, topic, messages) = (run.stack.pulsar.url(), run.topic.clone(), messages.clone());
        tokio::spawn(async move { produce(&url, &topic, &messages, true).await })
    };

    // The uploader is not running: the ingester fills its disk, then must pause.
    let stack = &run.stack;
    let paused = crate::util::eventually(
        "the ingester to pause for a full disk",
        Duration::from_secs(90),
        || {
            let status = stack.rule_status(RULE)?;
            let reason = status["state_reason"].as_str().unwrap_or_default();
            Ok((status["state"] == "error" && reason.contains("disk")).then_some(status))
        },
    )
    .await?;
    println!("paused after {:?}: {paused}", started.elapsed());
    let consumed = paused["messages_consumed"].as_u64().unwrap_or(0);
    assert!(
        consumed < MESSAGES as u64,
        "the whole topic fit on the disk; the test proves nothing: {paused}"
    );
    // Paused before the disk is full: room is left (the reserve, less at most one batch's log
    // and its compressed copy), and nothing is acknowledged.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let free = available(&run.data_dir)?;
    let still = stack.rule_status(RULE)?;
    println!("{free} bytes free while paused: {still}");
    assert!(free >= 2_000_000, "{free} bytes free: {still}");
    assert_eq!(still["messages_acked"].as_u64(), Some(0), "{still}");

    run.stack.start_uploader().await?;
    let stack = &run.stack;
    let resumed_at = Instant::now();
    let status = stack
        .wait_until_backed_up(RULE, MESSAGES as u64, Duration::from_secs(240))
        .await?;
    println!(
        "all {MESSAGES} acknowledged {:?} after the uploader came back ({:?} in all): {status}",
        resumed_at.elapsed(),
        started.elapsed()
    );
    producer.await.context("the producer task")??;

    run.assert_same_ingester()?;
    let stack = &run.stack;
    let logs = stack.ctl_json(&["logs", RULE, "--failed"])?;
    assert!(logs.to_string().contains("disk"), "{logs}");
    let objects = harness::read_all(&stack.s3.client(), crate::util::BUCKET, "").await?;
    let report = check_exactly_once(&objects, &messages)?;
    println!("{report:?}");
    assert_eq!(report.records, MESSAGES);
    run.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_filled_by_another_writer_breaks_the_database_until_space_is_back(
) -> anyhow::Result<()> {
    const FIRST: usize = 150;
    const ALL: usize = 300;
    let Some(mut run) = FullDisk::start("filled", "2MB").await? else {
        return Ok(());
    };
    let stack = &run.stack;
    let messages = random_messages(ALL, 815);

    // 15 MB spooled and sealed, waiting for the uploader.
    produce(&stack.pulsar.url(), &run.topic, &messages[..FIRST], true).await?;
    crate::util::eventually("the first messages sealed", Duration::from_secs(60), || {
        let _ = stack.ctl(&["rule", "flush", RULE]);
        let status = stack.rule_status(RULE)?;
        let sealed = status["messages_consumed"].as_u64() == Some(FIRST as u64)
            && status["open_segment_messages"].as_u64() == Some(0)
            && stack.ctl_json(&["segments", RULE])?["segments"]
                .as_array()
                .is_some_and(|s| s.iter().all(|s| s["state"] == "sealed"));
        Ok(sealed.then_some(()))
    })
    .await?;

    // Someone else takes every byte left; then the uploader stores and commits, which the
    // database must write.
    let filler = run.data_dir.join("filler");
    let taken = fill(&filler)?;
    println!("the filler took {taken} bytes");
    run.stack.start_uploader().await?;
    let stack = &run.stack;
    let log_of =
        |daemon: &Option<harness::Daemon>| daemon.as_ref().map(|d| d.log()).unwrap_or_default();
    crate::util::eventually(
        "a commit refused for the full disk",
        Duration::from_secs(60),
        || {
            let log = log_of(&stack.uploader);
            let refused = log.contains("CommitSegment") && log.contains("No space left");
            let broken = log_of(&stack.ingester).contains("the spool database failed a write");
            Ok((refused || broken).then_some(()))
        },
    )
    .await
    .with_context(|| {
        format!(
            "{}\n{}",
            stack.log_tail("ingester.log"),
            stack.log_tail("uploader.log")
        )
    })?;
    println!("with the disk full: {}", stack.rule_status(RULE)?);

    std::fs::remove_file(&filler)?;
    let freed_at = Instant::now();
    produce(&stack.pulsar.url(), &run.topic, &messages[FIRST..], true).await?;
    let objects = stack
        .wait_until_stored(RULE, &messages, Duration::from_secs(120))
        .await?;
    println!(
        "all {ALL} stored {:?} after the disk had room again",
        freed_at.elapsed()
    );
    let report = check_exactly_once(&objects, &messages)?;
    assert_eq!(report.records, ALL);
    assert!(
        log_of(&stack.ingester).contains("spool database reopened after a failed write"),
        "{}",
        stack.log_tail("ingester.log")
    );
    run.assert_same_ingester()?;
    run.finish().await
}
