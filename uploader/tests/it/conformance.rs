//! One suite of store checks, run against every store the uploader writes to (after quickwit's
//! `storage_test_suite`): the embedded `file://` store in a temp dir, and the S3 store on
//! in-process s3s-fs and on moto's server (a second, independent S3 implementation: COS and
//! other S3-compatible stores differ from s3s-fs as much as moto does). The S3 stores run in
//! both request-checksum flavours: CRC32C (what `auto` picks for them) and Content-MD5 (what
//! COS gets).
//!
//! Objects go through the uploader's own write path, [`upload::put_segment`]: one PutObject up
//! to the multipart threshold, the resumable multipart upload above it. Each store is one test
//! that runs every check in turn (the check's name is printed first, so a failure names it),
//! and after each check the store must hold nothing in progress and the journal no record.
//!
//! The moto tests are skipped, with the reason printed, only when `MOTO_SERVER_BIN` is unset and
//! the checkout has no `.venv/bin/moto_server`.

use std::collections::{BTreeMap, HashSet};
use std::io::Write as _;

use aws_sdk_s3::config::SharedInterceptor;
use proto::v1::SegmentInfo;
use uploader::multipart::{self, Journal};
use uploader::store::{Body, ObjectHead, PutOutcome, RequestChecksum, Store, StoreRouter, Target};
use uploader::upload;
use uploader::UploadError;

use crate::common::{self, random_bytes, segment, Recorder, StoreKind, TestStore, BUCKET};

const MIB: usize = 1 << 20;
/// Part size and multipart threshold: S3's smallest part.
const PART: usize = 5 * MIB;
/// Sent with one PutObject.
const SMALL: usize = 64 * 1024 + 3;
/// Three parts: 5 + 5 MiB and a last one of 1 MiB and a bit.
const LARGE: usize = 2 * PART + MIB + 5;

#[tokio::test]
async fn file_store() {
    run_suite(Backend::File).await;
}

#[tokio::test]
async fn s3s_fs_crc32c() {
    run_suite(Backend::S3(StoreKind::S3sFs, RequestChecksum::Crc32c)).await;
}

#[tokio::test]
async fn s3s_fs_md5() {
    run_suite(Backend::S3(StoreKind::S3sFs, RequestChecksum::Md5)).await;
}

#[tokio::test]
async fn moto_crc32c() {
    run_suite(Backend::S3(StoreKind::Moto, RequestChecksum::Crc32c)).await;
}

#[tokio::test]
async fn moto_md5() {
    run_suite(Backend::S3(StoreKind::Moto, RequestChecksum::Md5)).await;
}

#[derive(Debug, Clone, Copy)]
enum Backend {
    File,
    S3(StoreKind, RequestChecksum),
}

/// Runs each named `async fn(&Subject)` in turn through [`check`].
macro_rules! run_checks {
    ($subject:expr, $($name:ident),* $(,)?) => {
        $(check($subject, stringify!($name), $name($subject)).await;)*
    };
}

async fn run_suite(backend: Backend) {
    if let (Backend::S3(StoreKind::Moto, _), Some(why)) = (backend, common::moto_not_installed()) {
        // Straight to stderr: the test harness would swallow eprintln! of a passing test.
        let _ = writeln!(std::io::stderr(), "skipping {backend:?}: {why}");
        return;
    }
    let s = Subject::start(backend).await;
    run_checks!(
        &s,
        small_object_round_trips_with_metadata,
        head_of_a_missing_key_is_none,
        overwriting_a_key_is_idempotent,
        multipart_size_object_round_trips_byte_identical,
        a_body_failing_its_checks_leaves_no_object,
        an_interrupted_upload_resumes_or_leaves_nothing,
        abandoned_uploads_are_listed_and_swept,
    );
}

/// Runs one check, then asserts it left nothing behind.
async fn check(s: &Subject, name: &str, run: impl std::future::Future<Output = ()>) {
    // Captured, and shown with the panic if this check fails.
    eprintln!("conformance {}: {name}", s.name);
    s.recorder.take();
    run.await;
    assert_eq!(
        s.in_progress().await,
        Vec::<String>::new(),
        "{}: {name} left uploads or temporary files in the store",
        s.name
    );
    assert_eq!(
        s.journal.list().await,
        Vec::new(),
        "{}: {name} left multipart state in the journal",
        s.name
    );
}

/// A store under test as the uploader holds it, and the means to look inside it.
struct Subject {
    name: String,
    store: Store,
    target: Target,
    router: StoreRouter,
    journal: Journal,
    /// Every request of the S3 store (nothing for the file store).
    recorder: Recorder,
    server: Server,
    _state: tempfile::TempDir,
}

enum Server {
    File(tempfile::TempDir),
    S3 {
        server: TestStore,
        /// Looks at the store without being recorded.
        inspect: aws_sdk_s3::Client,
    },
}

impl Subject {
    /// The store as the uploader builds it from its own `endpoint` setting (region, path style
    /// and checksum resolved by the router), with a recorder on the S3 client. One part in
    /// flight at a time (`concurrency` 1), so a broken stream leaves known parts stored.
    async fn start(backend: Backend) -> Subject {
        let state = tempfile::tempdir().expect("state dir");
        let (server, endpoint, checksum) = match backend {
            Backend::File => {
                let dir = tempfile::tempdir().expect("store dir");
                let endpoint = format!("file://{}", dir.path().display());
                (Server::File(dir), endpoint, RequestChecksum::Md5)
            }
            Backend::S3(kind, checksum) => {
                let server = TestStore::start(kind).await;
                let endpoint = server.endpoint();
                let inspect = common::plain_client(&endpoint);
                (Server::S3 { server, inspect }, endpoint, checksum)
            }
        };
        let router = common::router(Some(&endpoint), checksum, PART as u64, 1);
        let target = router.target_for("", "").expect("target");
        let recorder = Recorder::default();
        let store = match &target {
            Target::File(_) => router.store_for("", "").await.expect("file store"),
            Target::S3(t) => Store::S3(
                common::s3_store(
                    t,
                    PART as u64,
                    vec![SharedInterceptor::new(recorder.clone())],
                )
                .await,
            ),
        };
        let name = match backend {
            Backend::File => "file".to_string(),
            Backend::S3(kind, checksum) => format!("{kind:?}/{checksum:?}"),
        };
        Subject {
            name,
            store,
            target,
            router,
            journal: Journal::new(state.path()),
            recorder,
            server,
            _state: state,
        }
    }

    /// Whether an interrupted write can be resumed: S3 multipart uploads can, a file write
    /// starts over.
    fn resumes(&self) -> bool {
        matches!(self.store, Store::S3(_))
    }

    fn is_s3s_fs(&self) -> bool {
        matches!(
            self.server,
            Server::S3 {
                server: TestStore::S3sFs(_),
                ..
            }
        )
    }

    /// Writes `seg` the uploader's way, from `data` read as `read` says.
    async fn put(
        &self,
        seg: &SegmentInfo,
        data: &[u8],
        read: Read,
    ) -> Result<PutOutcome, UploadError> {
        upload::put_segment(
            &self.router,
            &self.journal,
            &self.store,
            &self.target,
            seg,
            body(seg, data, read),
        )
        .await
    }

    async fn head(&self, key: &str) -> Option<ObjectHead> {
        self.store
            .head_object(BUCKET, key)
            .await
            .unwrap_or_else(|e| panic!("{}: HEAD {key}: {e}", self.name))
    }

    /// The object's bytes and content type, if the store holds it.
    async fn read(&self, key: &str) -> Option<(Vec<u8>, String)> {
        match &self.server {
            Server::File(dir) => {
                let data = std::fs::read(dir.path().join(BUCKET).join(key)).ok()?;
                let meta = dir
                    .path()
                    .join(".meta")
                    .join(BUCKET)
                    .join(format!("{key}.json"));
                let meta: serde_json::Value =
                    serde_json::from_slice(&std::fs::read(meta).expect("metadata file"))
                        .expect("metadata JSON");
                let content_type = meta["content_type"].as_str().unwrap_or_default();
                Some((data, content_type.to_string()))
            }
            Server::S3 { inspect, .. } => {
                let out = inspect
                    .get_object()
                    .bucket(BUCKET)
                    .key(key)
                    .send()
                    .await
                    .ok()?;
                let content_type = out.content_type().unwrap_or_default().to_string();
                let data = out.body.collect().await.expect("object body").into_bytes();
                Some((data.to_vec(), content_type))
            }
        }
    }

    /// What the store holds that is not an object: the file store's temporary files, s3s-fs's
    /// uploads, parts and temporary files, moto's multipart uploads.
    async fn in_progress(&self) -> Vec<String> {
        match &self.server {
            Server::File(dir) => [
                dir.path().join(BUCKET).join(".tmp"),
                dir.path().join(".meta").join(".tmp"),
            ]
            .iter()
            .flat_map(|d| common::file_names(d))
            .collect(),
            Server::S3 {
                server: TestStore::S3sFs(server),
                ..
            } => {
                let mut held = common::s3s_fs_uploads(server.root.path());
                held.extend(
                    common::file_names(server.root.path())
                        .into_iter()
                        .filter(|n| n.starts_with(".tmp.")),
                );
                held
            }
            Server::S3 {
                server: TestStore::Moto(_),
                inspect,
            } => inspect
                .list_multipart_uploads()
                .bucket(BUCKET)
                .send()
                .await
                .expect("ListMultipartUploads")
                .uploads()
                .iter()
                .map(|u| {
                    format!(
                        "{} {}",
                        u.key().unwrap_or_default(),
                        u.upload_id().unwrap_or_default()
                    )
                })
                .collect(),
        }
    }

    /// Multipart uploads the store holds open (s3s-fs: one `.upload-ID.json` each).
    async fn open_uploads(&self) -> usize {
        let open = self.in_progress().await;
        match &self.server {
            Server::S3 {
                server: TestStore::S3sFs(_),
                ..
            } => open.iter().filter(|n| n.starts_with(".upload-")).count(),
            Server::S3 { .. } => open.len(),
            Server::File(_) => 0,
        }
    }

    /// Part number and size of each UploadPart sent since the check began.
    fn parts_sent(&self) -> Vec<(u32, u64)> {
        self.recorder.part_sizes()
    }
}

/// How the segment's bytes arrive.
#[derive(Debug, Clone, Copy)]
enum Read {
    Whole,
    /// One byte flipped at this offset (a damaged read the ingester did not catch).
    Damaged(usize),
    /// The stream ends early, after this many bytes.
    Short(usize),
    /// The stream breaks (as a dropped ReadSegment would) after this many bytes.
    BreaksAfter(usize),
}

fn body(seg: &SegmentInfo, data: &[u8], read: Read) -> Body {
    let mut data = data.to_vec();
    let mut broken = false;
    match read {
        Read::Whole => {}
        Read::Damaged(at) => data[at] ^= 0xff,
        Read::Short(upto) => data.truncate(upto),
        Read::BreaksAfter(upto) => {
            data.truncate(upto);
            broken = true;
        }
    }
    common::verified_body(&data, 300_007, broken, common::expected(seg))
}

fn metadata_of(seg: &SegmentInfo) -> BTreeMap<String, String> {
    upload::object_metadata(seg).into_iter().collect()
}

/// The store holds `data` as `seg`'s object: size, metadata, ETag, bytes and content type.
async fn assert_stored(s: &Subject, seg: &SegmentInfo, data: &[u8], etag: &str) {
    let key = &seg.object_key;
    let head = s
        .head(key)
        .await
        .unwrap_or_else(|| panic!("{}: {key} is missing", s.name));
    assert_eq!(head.size, data.len() as u64, "{}: size of {key}", s.name);
    assert_eq!(
        head.metadata,
        metadata_of(seg),
        "{}: metadata of {key}",
        s.name
    );
    assert_eq!(
        head.etag, etag,
        "{}: HEAD's ETag is the one the write returned",
        s.name
    );
    let (stored, content_type) = s.read(key).await.expect("readable");
    assert!(stored == data, "{}: {key} is not byte-identical", s.name);
    assert_eq!(
        content_type, "application/gzip",
        "{}: content type of {key}",
        s.name
    );
}

async fn small_object_round_trips_with_metadata(s: &Subject) {
    let data = random_bytes(SMALL, 1);
    let seg = segment(1, &data);
    assert_eq!(
        s.head(&seg.object_key).await,
        None,
        "{}: not there yet",
        s.name
    );
    let out = s.put(&seg, &data, Read::Whole).await.expect("stored");
    assert!(!out.etag.is_empty(), "{}: an ETag", s.name);
    assert_stored(s, &seg, &data, &out.etag).await;
    if s.resumes() {
        let requests = s.recorder.requests();
        let puts = requests.iter().filter(|(m, _, _)| m == "PUT").count();
        assert_eq!(puts, 1, "{}: one PutObject: {requests:?}", s.name);
        assert_eq!(
            s.parts_sent(),
            Vec::new(),
            "{}: no multipart upload",
            s.name
        );
    }
}

/// A key the store does not hold is `None`, not an error: next to an object, sharing its name
/// as a prefix, or naming the "directory" the object's key runs through.
async fn head_of_a_missing_key_is_none(s: &Subject) {
    let data = random_bytes(1000, 2);
    let seg = segment(2, &data);
    s.put(&seg, &data, Read::Whole).await.expect("stored");
    let key = &seg.object_key;
    let mut missing = vec![
        "never/written.jsonl.gz".to_string(),
        format!("{key}.gz"),
        key[..key.len() - 1].to_string(),
    ];
    // s3s-fs keeps objects as plain files and answers HEAD of a key that is one of their
    // directories with HTTP 500; S3, moto and the file store answer 404 / None.
    if !s.is_s3s_fs() {
        missing.push("public/default/orders/2026/11/24/02".to_string());
    }
    for missing in missing {
        assert_eq!(s.head(&missing).await, None, "{}: HEAD {missing}", s.name);
    }
}

/// The uploader writes the same segment again after a crash between the store's confirmation
/// and the commit (and a rewritten segment with other content to the same key): a second write
/// of the same bytes succeeds and leaves the same object; other bytes replace it whole.
async fn overwriting_a_key_is_idempotent(s: &Subject) {
    for (no, len) in [(3, SMALL), (4, LARGE)] {
        let data = random_bytes(len, no);
        let seg = segment(no, &data);
        let first = s.put(&seg, &data, Read::Whole).await.expect("stored");
        let again = s.put(&seg, &data, Read::Whole).await.expect("stored again");
        assert_eq!(
            first.etag, again.etag,
            "{}: same bytes, same ETag ({len} bytes)",
            s.name
        );
        assert_stored(s, &seg, &data, &again.etag).await;
    }
    // Other content under the same key (segment 3 written again, now larger): it replaces the
    // object, metadata included.
    let data = random_bytes(SMALL * 2, 30);
    let mut seg = segment(3, &data);
    seg.messages = 99;
    let out = s.put(&seg, &data, Read::Whole).await.expect("replaced");
    assert_stored(s, &seg, &data, &out.etag).await;
}

async fn multipart_size_object_round_trips_byte_identical(s: &Subject) {
    let data = random_bytes(LARGE, 5);
    let seg = segment(5, &data);
    let out = s.put(&seg, &data, Read::Whole).await.expect("stored");
    assert_stored(s, &seg, &data, &out.etag).await;
    if s.resumes() {
        assert_eq!(
            s.parts_sent(),
            vec![
                (1, PART as u64),
                (2, PART as u64),
                (3, (LARGE - 2 * PART) as u64)
            ],
            "{}: parts of part_size, in order",
            s.name
        );
        assert!(
            out.etag.contains("-3"),
            "{}: a 3-part ETag: {}",
            s.name,
            out.etag
        );
    }
}

/// A body that fails its length or CRC32C check never becomes an object, and never damages the
/// object already under its key.
async fn a_body_failing_its_checks_leaves_no_object(s: &Subject) {
    let cases = [
        (SMALL, Read::Damaged(SMALL / 2)),
        (SMALL, Read::Short(SMALL - 1)),
        (LARGE, Read::Damaged(LARGE - 10)),
    ];
    for (i, (len, read)) in (60..).zip(cases) {
        let data = random_bytes(len, i);
        let seg = segment(i, &data);
        let err = s.put(&seg, &data, read).await.expect_err("refused");
        assert!(
            matches!(err, UploadError::Integrity(_)),
            "{}: {read:?}: {err}",
            s.name
        );
        assert_eq!(s.head(&seg.object_key).await, None, "{}: {read:?}", s.name);
        assert_eq!(s.read(&seg.object_key).await, None, "{}: {read:?}", s.name);
        assert_eq!(
            s.in_progress().await,
            Vec::<String>::new(),
            "{}: {read:?}",
            s.name
        );
    }
    if s.resumes() {
        let requests = s.recorder.requests();
        let completes = requests
            .iter()
            .filter(|(m, uri, _)| m == "POST" && uri.contains("uploadId="))
            .count();
        assert_eq!(completes, 0, "{}: never completed: {requests:?}", s.name);
    }

    // Over an object already stored: it stays as it was.
    let data = random_bytes(SMALL, 70);
    let seg = segment(70, &data);
    let out = s.put(&seg, &data, Read::Whole).await.expect("stored");
    for (len, read) in [(SMALL, Read::Damaged(7)), (LARGE, Read::Damaged(LARGE - 1))] {
        let other = random_bytes(len, 71);
        let mut rewritten = segment(70, &other);
        rewritten.messages = 1;
        let err = s.put(&rewritten, &other, read).await.expect_err("refused");
        assert!(
            matches!(err, UploadError::Integrity(_)),
            "{}: {read:?}: {err}",
            s.name
        );
        assert_stored(s, &seg, &data, &out.etag).await;
    }
}

/// A stream that breaks mid-way leaves no object. An S3 store keeps the parts it confirmed,
/// and the next attempt sends only the rest; the file store writes the object anew.
async fn an_interrupted_upload_resumes_or_leaves_nothing(s: &Subject) {
    let data = random_bytes(LARGE, 8);
    let seg = segment(8, &data);
    // Inside part 3: parts 1 and 2 are stored.
    let err = s
        .put(&seg, &data, Read::BreaksAfter(2 * PART + 100))
        .await
        .expect_err("the stream broke");
    assert!(matches!(err, UploadError::Ingester(_)), "{}: {err}", s.name);
    assert_eq!(
        s.head(&seg.object_key).await,
        None,
        "{}: nothing visible yet",
        s.name
    );
    if s.resumes() {
        let rec = s.journal.load("orders", 8).await.expect("state kept");
        assert_eq!(rec.parts.len(), 2, "{}: {rec:?}", s.name);
        assert_eq!(s.open_uploads().await, 1, "{}", s.name);
        s.recorder.take();
    } else {
        assert_eq!(s.in_progress().await, Vec::<String>::new(), "{}", s.name);
        assert_eq!(s.journal.list().await, Vec::new(), "{}", s.name);
    }

    let out = s.put(&seg, &data, Read::Whole).await.expect("stored");
    assert_stored(s, &seg, &data, &out.etag).await;
    if s.resumes() {
        assert_eq!(
            s.parts_sent(),
            vec![(3, (LARGE - 2 * PART) as u64)],
            "{}: only the part the store lacked",
            s.name
        );
        let requests = s.recorder.requests();
        let list_parts = requests
            .iter()
            .filter(|(m, uri, _)| m == "GET" && uri.contains("uploadId="))
            .count();
        assert_eq!(list_parts, 1, "{}: one ListParts: {requests:?}", s.name);
    }
}

/// Uploads the uploader no longer needs (the ingester stopped offering their segment) are found
/// in the journal and aborted in the store by the sweep; uploads still offered stay.
async fn abandoned_uploads_are_listed_and_swept(s: &Subject) {
    let data = random_bytes(LARGE, 9);
    let (abandoned, offered) = (segment(90, &data), segment(91, &data));
    for seg in [&abandoned, &offered] {
        s.put(seg, &data, Read::BreaksAfter(PART + 100))
            .await
            .expect_err("the stream broke");
    }
    let listed: HashSet<u64> = s
        .journal
        .list()
        .await
        .iter()
        .map(|r| r.identity.segment_no)
        .collect();
    let expected_open = if s.resumes() { 2 } else { 0 };
    assert_eq!(s.open_uploads().await, expected_open, "{}", s.name);
    let expected: HashSet<u64> = if s.resumes() {
        [90, 91].into()
    } else {
        HashSet::new()
    };
    assert_eq!(listed, expected, "{}: uploads in progress", s.name);

    let swept = multipart::sweep(
        &s.router,
        &s.journal,
        std::slice::from_ref(&offered),
        &HashSet::new(),
    )
    .await;
    assert_eq!(swept, expected_open / 2, "{}: the abandoned upload", s.name);
    assert_eq!(s.open_uploads().await, expected_open / 2, "{}", s.name);

    // The ingester no longer offers the other one either.
    let swept = multipart::sweep(&s.router, &s.journal, &[], &HashSet::new()).await;
    assert_eq!(swept, expected_open / 2, "{}", s.name);
    for seg in [&abandoned, &offered] {
        assert_eq!(s.head(&seg.object_key).await, None, "{}", s.name);
    }
}
