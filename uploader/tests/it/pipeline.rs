//! The whole loop against an in-process fake ingester and the embedded file store: list →
//! read → verify → store → commit, retry after a corrupt read, skip a quarantined segment,
//! status over gRPC, graceful shutdown.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use proto::v1::{UploaderStatusReply, UploaderStatusRequest};
use proto::UploaderClient;
use uploader::config::{Args, Credentials, UploaderConfig};

use crate::common::{fake_segment, serve_fake, Fake, Mode, Seg, BUCKET};

fn config(ingester: &str, store_dir: &std::path::Path, state_dir: PathBuf) -> UploaderConfig {
    let args = Args {
        ingester: Some(ingester.into()),
        endpoint: Some(format!("file://{}", store_dir.display())),
        state_dir: Some(state_dir),
        max_backoff: Some("200ms".into()),
        concurrency: Some("2".into()),
        ..Args::default()
    };
    UploaderConfig::build(args, None, Credentials::DefaultChain).expect("valid config")
}

struct Running {
    status_url: String,
    stop: tokio::sync::oneshot::Sender<()>,
    handle: tokio::task::JoinHandle<anyhow::Result<()>>,
}

async fn start(config: UploaderConfig) -> Running {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let status_url = format!("http://{}", listener.local_addr().expect("addr"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(uploader::run(config, listener, async move {
        let _ = stopped.await;
    }));
    Running {
        status_url,
        stop,
        handle,
    }
}

async fn status(url: &str) -> UploaderStatusReply {
    let mut client = UploaderClient::connect(url.to_string())
        .await
        .expect("status service");
    client
        .uploader_status(UploaderStatusRequest {})
        .await
        .expect("status")
        .into_inner()
}

async fn stop(running: Running) {
    let _ = running.stop.send(());
    tokio::time::timeout(Duration::from_secs(25), running.handle)
        .await
        .expect("stops within the grace period")
        .expect("task")
        .expect("clean exit");
}

#[tokio::test]
async fn uploads_verifies_retries_and_commits() {
    let fake = Arc::new(Fake::default());
    fake.segs.lock().expect("fake").extend([
        fake_segment(1, 300_000, Mode::Good),
        fake_segment(2, 200_000, Mode::CorruptOnce),
        fake_segment(3, 1000, Mode::DataLoss),
    ]);
    let url = serve_fake(fake.clone()).await;
    let store_dir = tempfile::tempdir().expect("tempdir");
    let state_dir = store_dir.path().join("state");
    let running = start(config(&url, store_dir.path(), state_dir.clone())).await;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while fake.commits.lock().expect("fake").len() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "segments not committed in time"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(state_dir.is_dir(), "state_dir created");

    let commits = fake.commits.lock().expect("fake").clone();
    let mut committed: Vec<u64> = commits.iter().map(|c| c.segment_no).collect();
    committed.sort_unstable();
    assert_eq!(committed, vec![1, 2]);
    let retried = commits
        .iter()
        .find(|c| c.segment_no == 2)
        .expect("segment 2");
    assert_eq!(retried.attempts, 2);
    assert!(!retried.etag.is_empty());
    // Each commit names the object the ingester sealed: key, size and CRC32C.
    for commit in &commits {
        let segs = fake.segs.lock().expect("fake");
        let info = &segs
            .iter()
            .find(|s| s.info.segment_no == commit.segment_no)
            .expect("a listed segment")
            .info;
        assert_eq!(
            (
                &commit.object_key,
                commit.file_bytes,
                &commit.content_crc32c
            ),
            (&info.object_key, info.file_bytes, &info.content_crc32c)
        );
    }

    let failures = fake.failures.lock().expect("fake").clone();
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert_eq!((failures[0].segment_no, failures[0].attempt), (2, 1));
    assert!(
        failures[0].error.contains("crc32c"),
        "{}",
        failures[0].error
    );

    for s in fake
        .segs
        .lock()
        .expect("fake")
        .iter()
        .filter(|s| s.mode != Mode::DataLoss)
    {
        assert_stored(store_dir.path(), s);
        let meta = store_dir
            .path()
            .join(".meta")
            .join(BUCKET)
            .join(format!("{}.json", s.info.object_key));
        let meta: serde_json::Value =
            serde_json::from_slice(&std::fs::read(meta).expect("meta")).expect("json");
        assert_eq!(
            meta["metadata"]["content-crc32c"],
            s.info.content_crc32c.as_str()
        );
        assert_eq!(meta["metadata"]["first-message-id"], "1:0:-1:-1");
        assert_eq!(meta["content_type"], "application/gzip");
    }
    let quarantined = store_dir
        .path()
        .join(BUCKET)
        .join("public/default/orders/2026/11/24/02/orders-000003.jsonl.gz");
    assert!(!quarantined.exists());

    // The fake records a commit before the uploader counts it; give the counter a moment.
    let mut st = status(&running.status_url).await;
    while st.segments_uploaded < 2 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        st = status(&running.status_url).await;
    }
    assert!(st.ingester_reachable);
    assert_eq!(st.segments_uploaded, 2);
    assert_eq!(st.bytes_uploaded, 500_000);
    assert_eq!(st.upload_failures, 1);
    assert!(st.store.starts_with("file://"), "{}", st.store);
    stop(running).await;

    // A second uploader finds the objects already stored: it commits without re-reading.
    let reads_before: u32 = fake
        .segs
        .lock()
        .expect("fake")
        .iter()
        .map(|s| s.reads)
        .sum();
    for s in fake.segs.lock().expect("fake").iter_mut() {
        if s.mode != Mode::DataLoss {
            s.done = false;
        }
    }
    let running = start(config(&url, store_dir.path(), state_dir)).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while fake.commits.lock().expect("fake").len() < 4 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "re-commits not sent in time"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let reads_after: u32 = fake
        .segs
        .lock()
        .expect("fake")
        .iter()
        .map(|s| s.reads)
        .sum();
    assert_eq!(
        reads_before, reads_after,
        "stored objects are not uploaded again"
    );
    stop(running).await;
}

/// An ingester with a full disk refuses commits with RESOURCE_EXHAUSTED until it has room
/// again: the stored object is committed then, without being sent again.
#[tokio::test]
async fn a_commit_refused_for_a_full_disk_is_retried_without_uploading_again() {
    let fake = Arc::new(Fake::default());
    fake.segs
        .lock()
        .expect("fake")
        .push(fake_segment(1, 100_000, Mode::Good));
    // Three tries in each of the first two attempts, one in the third.
    *fake.refuse_commits.lock().expect("fake") = 7;
    let url = serve_fake(fake.clone()).await;
    let store_dir = tempfile::tempdir().expect("tempdir");
    let mut config = config(&url, store_dir.path(), store_dir.path().join("state"));
    // A long upload backoff must not hold back a commit that only waits for the ingester.
    config.max_backoff = Duration::from_secs(3600);
    let running = start(config).await;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while fake.commits.lock().expect("fake").is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not committed in time"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let commits = fake.commits.lock().expect("fake").clone();
    assert_eq!(commits.len(), 1);
    assert_eq!(commits[0].attempts, 3);
    let failures = fake.failures.lock().expect("fake").clone();
    assert_eq!(
        failures.iter().map(|f| f.attempt).collect::<Vec<_>>(),
        vec![1, 2]
    );
    assert!(
        failures[0].error.contains("ResourceExhausted"),
        "{}",
        failures[0].error
    );
    {
        let segs = fake.segs.lock().expect("fake");
        assert_eq!(segs[0].reads, 1, "the stored object is not sent again");
        assert_stored(store_dir.path(), &segs[0]);
    }
    stop(running).await;
}

#[tokio::test]
async fn unreachable_ingester_shows_in_status_and_shutdown_is_prompt() {
    // A port bound for the whole test but never listened on: connections are refused, and no
    // other process can take it (as it could a port bound and released).
    let nowhere = tokio::net::TcpSocket::new_v4().expect("socket");
    nowhere
        .bind("127.0.0.1:0".parse().expect("addr"))
        .expect("bind");
    let port = nowhere.local_addr().expect("addr").port();
    let store_dir = tempfile::tempdir().expect("tempdir");
    let running = start(config(
        &format!("http://127.0.0.1:{port}"),
        store_dir.path(),
        store_dir.path().join("state"),
    ))
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let st = status(&running.status_url).await;
        if !st.ingester_error.is_empty() {
            assert!(!st.ingester_reachable);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "unreachable ingester not reported"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let started = std::time::Instant::now();
    stop(running).await;
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// A sealed file the uploader can open is read from disk (no ReadSegment call); one whose bytes
/// do not match the announced checksum fails that attempt and is then read over ReadSegment; a
/// path that does not open here goes straight to ReadSegment; `read_local = false` never reads
/// the disk.
#[tokio::test]
async fn sealed_files_on_this_host_are_read_locally_and_fall_back_to_read_segment() {
    let files = tempfile::tempdir().expect("tempdir");
    // Where the ingester keeps sealed files: data_dir/segments/{rule}/{segment_no:020}.jsonl.gz.
    let rule_dir = files.path().join("segments").join("orders");
    std::fs::create_dir_all(&rule_dir).expect("mkdir");
    let sealed_path = |no: u64| rule_dir.join(format!("{no:020}.jsonl.gz"));
    let mut local = fake_segment(1, 300_000, Mode::Good);
    let mut damaged = fake_segment(2, 200_000, Mode::Good);
    let mut elsewhere = fake_segment(3, 50_000, Mode::Good);
    std::fs::write(sealed_path(1), &local.data).expect("write");
    local.info.file_path = sealed_path(1).display().to_string();
    let mut bad = damaged.data.clone();
    bad[100_000] ^= 0x01;
    std::fs::write(sealed_path(2), &bad).expect("write");
    damaged.info.file_path = sealed_path(2).display().to_string();
    // Shaped right, but no such file on this host.
    elsewhere.info.file_path = sealed_path(3).display().to_string();

    let fake = Arc::new(Fake::default());
    fake.segs
        .lock()
        .expect("fake")
        .extend([local, damaged, elsewhere]);
    let url = serve_fake(fake.clone()).await;
    let store_dir = tempfile::tempdir().expect("tempdir");
    let state_dir = store_dir.path().join("state");
    let running = start(config(&url, store_dir.path(), state_dir.clone())).await;
    wait_for_commits(&fake, 3).await;
    stop(running).await;

    let reads = |no: u64| -> u32 {
        let segs = fake.segs.lock().expect("fake");
        segs.iter()
            .find(|s| s.info.segment_no == no)
            .map_or(u32::MAX, |s| s.reads)
    };
    assert_eq!(reads(1), 0, "segment 1 was read from its file");
    assert_eq!(reads(2), 1, "segment 2 fell back to ReadSegment once");
    assert_eq!(reads(3), 1, "segment 3's path does not open here");
    let commits = fake.commits.lock().expect("fake").clone();
    let attempts = |no: u64| {
        commits
            .iter()
            .find(|c| c.segment_no == no)
            .map(|c| c.attempts)
    };
    assert_eq!(
        (attempts(1), attempts(2), attempts(3)),
        (Some(1), Some(2), Some(1))
    );
    let failures = fake.failures.lock().expect("fake").clone();
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert_eq!(failures[0].segment_no, 2);
    assert!(
        failures[0].error.contains("crc32c"),
        "{}",
        failures[0].error
    );
    for s in fake.segs.lock().expect("fake").iter() {
        assert_stored(store_dir.path(), s);
    }

    // Turned off: the same readable file is streamed from the ingester instead.
    let fake = Arc::new(Fake::default());
    let mut again = fake_segment(4, 100_000, Mode::Good);
    std::fs::write(sealed_path(4), &again.data).expect("write");
    again.info.file_path = sealed_path(4).display().to_string();
    fake.segs.lock().expect("fake").push(again);
    let url = serve_fake(fake.clone()).await;
    let mut off = config(&url, store_dir.path(), state_dir);
    off.read_local = false;
    let running = start(off).await;
    wait_for_commits(&fake, 1).await;
    stop(running).await;
    assert_eq!(fake.segs.lock().expect("fake")[0].reads, 1);
}

/// The file store holds `seg`'s object with exactly its bytes.
fn assert_stored(store_dir: &std::path::Path, seg: &Seg) {
    let path = store_dir.join(BUCKET).join(&seg.info.object_key);
    assert_eq!(
        std::fs::read(&path).expect("object"),
        seg.data,
        "{}",
        seg.info.object_key
    );
}

async fn wait_for_commits(fake: &Fake, count: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while fake.commits.lock().expect("fake").len() < count {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{count} segments not committed in time"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
