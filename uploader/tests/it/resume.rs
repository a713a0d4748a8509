//! Resumable multipart uploads against two real S3 implementations, s3s-fs (in-process) and
//! moto's server: an interrupted upload resumes without re-sending the parts the store has, a
//! changed segment or a CRC mismatch aborts the old upload, and the sweep aborts uploads of
//! segments the ingester no longer offers. Every test runs once per store (`s3s_fs::…` and
//! `moto::…`): code that only ever met one S3 server can still fail against another.

use std::collections::HashSet;

use aws_sdk_s3::config::SharedInterceptor;
use proto::v1::SegmentInfo;
use uploader::multipart::{self, Identity, Journal};
use uploader::store::s3::{checksum_crc32c, PartList, S3Store};
use uploader::store::{Body, PutRequest, RequestChecksum, S3Target, StoreRouter};
use uploader::UploadError;

use crate::common::{
    self, random_bytes, segment, BreakListParts, OpenRequests, Recorded, Recorder, StoreKind,
    TestStore, BUCKET,
};

/// Runs each named `async fn(StoreKind)` as one test per store: `s3s_fs::NAME` and `moto::NAME`.
macro_rules! on_every_store {
    ($($name:ident),* $(,)?) => {
        mod s3s_fs {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::StoreKind::S3sFs).await;
                }
            )*
        }
        mod moto {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::StoreKind::Moto).await;
                }
            )*
        }
    };
}

on_every_store!(
    interrupted_upload_resumes_without_resending_stored_parts,
    interrupted_crc32c_upload_resumes_without_resending_stored_parts,
    crc_mismatch_on_resume_aborts_and_forgets,
    changed_segment_aborts_the_old_upload_and_starts_over,
    sweep_aborts_uploads_of_segments_no_longer_offered,
    part_buffers_come_back_after_their_upload,
    a_lone_upload_sends_several_parts_at_once,
    an_upload_that_cannot_be_resumed_starts_over_after_three_tries,
);

const MIB: usize = 1 << 20;
const PART: u64 = 5 * MIB as u64;

/// Part numbers of the UploadPart requests in `requests`.
fn parts_sent(requests: &[Recorded]) -> Vec<u32> {
    requests
        .iter()
        .filter(|(m, _, _)| m == "PUT")
        .filter_map(|(_, uri, _)| {
            let n = uri.split("partNumber=").nth(1)?;
            n.split('&').next()?.parse().ok()
        })
        .collect()
}

fn count(requests: &[Recorded], method: &str, needle: &str) -> usize {
    requests
        .iter()
        .filter(|(m, uri, _)| m == method && uri.contains(needle))
        .count()
}

struct Env {
    server: TestStore,
    /// Looks at the store without being recorded.
    inspect: aws_sdk_s3::Client,
    state: tempfile::TempDir,
    target: S3Target,
    store: S3Store,
    router: StoreRouter,
    journal: Journal,
    recorder: Recorder,
    open_requests: OpenRequests,
    break_list_parts: BreakListParts,
}

async fn env(kind: StoreKind) -> Env {
    env_with(kind, RequestChecksum::Md5).await
}

/// With an uploader `concurrency` of 1 (2 parts held: one sending, one being read), so the tests
/// here know which parts were sent when a stream breaks.
async fn env_with(kind: StoreKind, checksum: RequestChecksum) -> Env {
    env_with_concurrency(kind, checksum, 1).await
}

async fn env_with_concurrency(
    kind: StoreKind,
    checksum: RequestChecksum,
    concurrency: usize,
) -> Env {
    let server = TestStore::start(kind).await;
    let inspect = common::plain_client(&server.endpoint());
    let target = common::s3_target(&server.endpoint(), checksum);
    let recorder = Recorder::default();
    let open_requests = OpenRequests::default();
    let break_list_parts = BreakListParts::default();
    let store = common::s3_store(
        &target,
        PART,
        vec![
            SharedInterceptor::new(recorder.clone()),
            SharedInterceptor::new(open_requests.clone()),
            SharedInterceptor::new(break_list_parts.clone()),
        ],
    )
    .await;
    let router = common::router(None, checksum, PART, concurrency);
    let state = tempfile::tempdir().expect("state dir");
    let journal = Journal::new(state.path());
    Env {
        server,
        inspect,
        state,
        target,
        store,
        router,
        journal,
        recorder,
        open_requests,
        break_list_parts,
    }
}

fn request(seg: &SegmentInfo) -> PutRequest {
    PutRequest {
        bucket: seg.bucket.clone(),
        key: seg.object_key.clone(),
        metadata: vec![("content-crc32c".into(), seg.content_crc32c.clone())],
        content_type: "application/gzip".into(),
        total_len: seg.file_bytes,
        if_absent: false,
    }
}

/// `data` in odd chunks, verified against `seg`; with `fail_after`, the stream breaks (as a
/// dropped ReadSegment would) once that many bytes went through.
fn body(data: &[u8], seg: &SegmentInfo, fail_after: Option<usize>) -> Body {
    let upto = fail_after.unwrap_or(data.len());
    common::verified_body(
        &data[..upto],
        262_147,
        fail_after.is_some(),
        common::expected(seg),
    )
}

impl Env {
    fn identity(&self, seg: &SegmentInfo) -> Identity {
        Identity::new(seg, &self.target, PART)
    }

    async fn upload(
        &self,
        seg: &SegmentInfo,
        data: &[u8],
        fail_after: Option<usize>,
    ) -> Result<String, UploadError> {
        multipart::upload(
            &self.store,
            &self.router,
            &self.journal,
            self.identity(seg),
            &request(seg),
            body(data, seg, fail_after),
        )
        .await
        .map(|o| o.etag)
    }

    /// The object's bytes, if the store holds it.
    async fn stored(&self, seg: &SegmentInfo) -> Option<Vec<u8>> {
        let out = self
            .inspect
            .get_object()
            .bucket(BUCKET)
            .key(&seg.object_key)
            .send()
            .await
            .ok()?;
        let data = out.body.collect().await.expect("object body");
        Some(data.into_bytes().to_vec())
    }

    /// The multipart uploads the store still holds open: s3s-fs's `.upload-ID.json` files and
    /// their part files, moto's ListMultipartUploads.
    async fn open_uploads(&self) -> Vec<String> {
        match &self.server {
            TestStore::S3sFs(server) => common::s3s_fs_uploads(server.root.path()),
            TestStore::Moto(_) => self
                .inspect
                .list_multipart_uploads()
                .bucket(BUCKET)
                .send()
                .await
                .expect("ListMultipartUploads")
                .uploads()
                .iter()
                .filter_map(|u| u.upload_id().map(str::to_string))
                .collect(),
        }
    }

    /// How many multipart uploads the store holds open.
    async fn open_upload_count(&self) -> usize {
        let open = self.open_uploads().await;
        match self.server.kind() {
            StoreKind::S3sFs => open.iter().filter(|n| n.starts_with(".upload-")).count(),
            StoreKind::Moto => open.len(),
        }
    }
}

async fn interrupted_upload_resumes_without_resending_stored_parts(kind: StoreKind) {
    interrupted_upload_resumes(kind, RequestChecksum::Md5).await;
}

/// The CRC32C flavour: the upload is created with that algorithm, every part carries its
/// CRC32C, the record keeps them, and Complete (after the resume) names them all.
async fn interrupted_crc32c_upload_resumes_without_resending_stored_parts(kind: StoreKind) {
    interrupted_upload_resumes(kind, RequestChecksum::Crc32c).await;
}

async fn interrupted_upload_resumes(kind: StoreKind, checksum: RequestChecksum) {
    let env = env_with(kind, checksum).await;
    let data = random_bytes(17 * MIB + 123, 1); // parts: 5 + 5 + 5 + 2 MiB
    let seg = segment(1, &data);

    // The stream breaks inside part 3: parts 1 and 2 are stored and recorded.
    let err = env
        .upload(&seg, &data, Some(12 * MIB))
        .await
        .expect_err("stream broke");
    assert!(matches!(err, UploadError::Ingester(_)), "{err}");
    let first = env.recorder.take();
    assert_eq!(parts_sent(&first), vec![1, 2]);
    assert_eq!(count(&first, "DELETE", "uploadId="), 0, "not aborted");
    let rec = env
        .journal
        .load("orders", 1)
        .await
        .expect("state kept for resuming");
    assert_eq!(rec.parts.len(), 2);
    assert_eq!(rec.identity.file_bytes, data.len() as u64);
    assert_eq!(rec.identity.target.checksum, checksum);
    let crcs: Vec<_> = rec
        .parts
        .iter()
        .map(|p| p.checksum_crc32c.clone())
        .collect();
    match checksum {
        RequestChecksum::Md5 => assert_eq!(crcs, vec![None, None]),
        RequestChecksum::Crc32c => assert_eq!(
            crcs,
            vec![
                Some(checksum_crc32c(&data[..PART as usize])),
                Some(checksum_crc32c(&data[PART as usize..2 * PART as usize])),
            ]
        ),
    }
    let header = match checksum {
        RequestChecksum::Md5 => "content-md5",
        RequestChecksum::Crc32c => "x-amz-checksum-crc32c",
    };
    assert!(
        first
            .iter()
            .filter(|(m, uri, _)| m == "PUT" && uri.contains("partNumber="))
            .all(|(_, _, h)| h.iter().any(|h| h == header)),
        "every part carries {header}: {first:?}"
    );
    let state_file = env.journal.path_for("orders", 1);
    assert!(state_file.starts_with(env.state.path().join("multipart")));

    // The next attempt asks the store, sends parts 3 and 4 only, completes.
    let etag = env.upload(&seg, &data, None).await.expect("resumed");
    assert!(etag.contains("-4"), "4 parts: {etag}");
    let second = env.recorder.take();
    assert_eq!(parts_sent(&second), vec![3, 4], "{second:?}");
    assert_eq!(count(&second, "GET", "uploadId="), 1, "one ListParts");
    assert_eq!(count(&second, "POST", "uploads"), 0, "no new upload");
    assert_eq!(
        env.stored(&seg).await.as_deref(),
        Some(&data[..]),
        "byte-identical"
    );
    assert!(!state_file.exists(), "state removed after Complete");
    assert_eq!(env.open_uploads().await, Vec::<String>::new());
}

async fn crc_mismatch_on_resume_aborts_and_forgets(kind: StoreKind) {
    let env = env(kind).await;
    let data = random_bytes(11 * MIB, 2);
    let seg = segment(2, &data);
    env.upload(&seg, &data, Some(6 * MIB))
        .await
        .expect_err("stream broke");
    assert_eq!(parts_sent(&env.recorder.take()), vec![1]);

    // Same announced identity, but the bytes now differ in part 3 (a damaged read that the
    // ingester did not catch): the full-stream CRC check fails before Complete.
    let mut damaged = data.clone();
    damaged[10 * MIB + 5] ^= 0xff;
    let err = multipart::upload(
        &env.store,
        &env.router,
        &env.journal,
        env.identity(&seg),
        &request(&seg),
        body(&damaged, &seg, None),
    )
    .await
    .expect_err("crc mismatch");
    assert!(matches!(err, UploadError::Integrity(_)), "{err}");
    let requests = env.recorder.take();
    assert_eq!(count(&requests, "DELETE", "uploadId="), 1, "aborted");
    assert_eq!(count(&requests, "POST", "uploadId="), 0, "never completed");
    assert!(env.journal.load("orders", 2).await.is_none());
    assert!(env.stored(&seg).await.is_none());
    assert_eq!(env.open_uploads().await, Vec::<String>::new());

    // A damaged part the store already has is caught by its MD5 ETag and sent again.
    let mut early_damage = data.clone();
    early_damage[100] ^= 0xff;
    env.upload(&seg, &early_damage, Some(6 * MIB))
        .await
        .expect_err("stream broke");
    assert_eq!(parts_sent(&env.recorder.take()), vec![1]);
    env.upload(&seg, &data, None).await.expect("stored");
    assert_eq!(parts_sent(&env.recorder.take()), vec![1, 2, 3]);
    assert_eq!(env.stored(&seg).await.as_deref(), Some(&data[..]));
    assert_eq!(env.open_uploads().await, Vec::<String>::new());
}

async fn changed_segment_aborts_the_old_upload_and_starts_over(kind: StoreKind) {
    let env = env(kind).await;
    let data = random_bytes(11 * MIB, 3);
    let seg = segment(3, &data);
    env.upload(&seg, &data, Some(6 * MIB))
        .await
        .expect_err("stream broke");
    let old = env.journal.load("orders", 3).await.expect("state");
    env.recorder.take();

    // The segment was written again with other content (same rule and number).
    let new_data = random_bytes(12 * MIB, 4);
    let new_seg = segment(3, &new_data);
    env.upload(&new_seg, &new_data, None).await.expect("stored");
    let requests = env.recorder.take();
    assert_eq!(
        parts_sent(&requests),
        vec![1, 2, 3],
        "all parts of the new upload"
    );
    assert_eq!(env.stored(&new_seg).await.as_deref(), Some(&new_data[..]));
    assert!(env.journal.load("orders", 3).await.is_none());
    // The old upload id is gone from the store.
    assert_eq!(env.open_uploads().await, Vec::<String>::new());
    match env
        .store
        .list_parts(BUCKET, &old.identity.key, &old.upload_id)
        .await
        .expect("list")
    {
        PartList::UploadGone => {}
        PartList::Listed(parts) => assert_eq!(parts, vec![]),
        PartList::Unusable(err) => panic!("{err}"),
    }
}

async fn sweep_aborts_uploads_of_segments_no_longer_offered(kind: StoreKind) {
    let env = env(kind).await;
    let data = random_bytes(11 * MIB, 5);
    let (gone, offered, busy) = (segment(10, &data), segment(11, &data), segment(12, &data));
    for seg in [&gone, &offered, &busy] {
        env.upload(seg, &data, Some(6 * MIB))
            .await
            .expect_err("stream broke");
    }
    assert_eq!(env.journal.list().await.len(), 3);
    let in_flight: HashSet<(String, u64)> = [("orders".to_string(), 12)].into();

    let aborted = multipart::sweep(
        &env.router,
        &env.journal,
        std::slice::from_ref(&offered),
        &in_flight,
    )
    .await;
    assert_eq!(aborted, 1);
    assert!(env.journal.load("orders", 10).await.is_none(), "abandoned");
    assert!(
        env.journal.load("orders", 11).await.is_some(),
        "still offered"
    );
    assert!(env.journal.load("orders", 12).await.is_some(), "in flight");
    // Two uploads stay open in the store.
    assert_eq!(
        env.open_upload_count().await,
        2,
        "{:?}",
        env.open_uploads().await
    );

    // A segment offered with other content is abandoned too.
    let mut changed = offered.clone();
    changed.content_crc32c = "00000000".into();
    assert_eq!(
        multipart::sweep(&env.router, &env.journal, &[changed], &HashSet::new()).await,
        2
    );
    assert!(env.journal.list().await.is_empty());
    assert_eq!(env.open_uploads().await, Vec::<String>::new());
}

/// Once the SDK is done with a part, its buffer goes back to the pool and the next part is
/// gathered in it (a fresh part-sized buffer would be faulted in and zeroed by the kernel).
async fn part_buffers_come_back_after_their_upload(kind: StoreKind) {
    let env = env(kind).await;
    let data = random_bytes(12 * MIB, 7); // parts: 5 + 5 + 2 MiB
    let seg = segment(7, &data);
    let etag = env.upload(&seg, &data, None).await.expect("uploaded");
    assert!(etag.contains("-3"), "3 parts: {etag}");
    assert_eq!(env.stored(&seg).await.as_deref(), Some(&data[..]));
    // Three parts went up; each buffer was handed back after its UploadPart, and the reads
    // took them again. Only the end-of-body read's empty buffer would come back otherwise.
    assert_eq!(
        env.store.part_buffers().idle(),
        2,
        "the parts' buffers did not come back after their uploads"
    );
}

/// An upload running alone takes the idle share of the part budget: several UploadParts at once
/// (one TCP stream carries less than the link), and the object is still byte for byte the
/// segment. With every upload slot in use (concurrency 1 here) it is one at a time.
async fn a_lone_upload_sends_several_parts_at_once(kind: StoreKind) {
    let data = random_bytes(6 * PART as usize - 1234, 11); // 6 parts
    let env = env_with_concurrency(kind, RequestChecksum::Crc32c, 4).await;
    let seg = segment(11, &data);
    let etag = env.upload(&seg, &data, None).await.expect("uploaded");
    assert!(etag.contains("-6"), "6 parts: {etag}");
    assert_eq!(env.stored(&seg).await.as_deref(), Some(&data[..]));
    let most = env.open_requests.most();
    assert!(
        (2..=7).contains(&most),
        "a lone upload may keep 7 parts in flight (8 held, one being read); most at once: {most}"
    );
    assert_eq!(parts_sent(&env.recorder.requests()).len(), 6);

    let env = env_with_concurrency(kind, RequestChecksum::Crc32c, 1).await;
    let seg = segment(12, &data);
    env.upload(&seg, &data, None).await.expect("uploaded");
    assert_eq!(env.stored(&seg).await.as_deref(), Some(&data[..]));
    assert_eq!(env.open_requests.most(), 1, "one part at a time");
}

/// A store whose ListParts answer cannot be used (here: a 200 the SDK cannot read, as moto's was)
/// must not keep the segment from ever being stored: each attempt that cannot resume is
/// counted in the record, and the third aborts the upload and sends the object from scratch.
async fn an_upload_that_cannot_be_resumed_starts_over_after_three_tries(kind: StoreKind) {
    let env = env(kind).await;
    let data = random_bytes(11 * MIB, 13); // parts: 5 + 5 + 1 MiB
    let seg = segment(13, &data);
    env.upload(&seg, &data, Some(6 * MIB))
        .await
        .expect_err("stream broke");
    assert_eq!(parts_sent(&env.recorder.take()), vec![1]);
    let old = env.journal.load("orders", 13).await.expect("state");

    env.break_list_parts.arm(true);
    for attempt in 1..=2 {
        let err = env
            .upload(&seg, &data, None)
            .await
            .expect_err("ListParts cannot be read");
        assert!(
            err.to_string()
                .contains("ListParts failed: the store answered HTTP 200"),
            "attempt {attempt}: {err}"
        );
        let requests = env.recorder.take();
        assert_eq!(
            parts_sent(&requests),
            Vec::<u32>::new(),
            "attempt {attempt}"
        );
        assert_eq!(
            count(&requests, "DELETE", "uploadId="),
            0,
            "not aborted yet"
        );
        let rec = env
            .journal
            .load("orders", 13)
            .await
            .expect("state kept for another try");
        assert_eq!(rec.upload_id, old.upload_id);
        assert_eq!(rec.resume_failures, attempt, "counted in the record");
    }

    // The third try gives up on the old upload and sends the whole object again.
    let etag = env
        .upload(&seg, &data, None)
        .await
        .expect("started over and stored");
    assert!(etag.contains("-3"), "3 parts: {etag}");
    let requests = env.recorder.take();
    assert_eq!(
        count(&requests, "DELETE", "uploadId="),
        1,
        "old upload aborted"
    );
    assert_eq!(count(&requests, "POST", "uploads"), 1, "a new upload");
    assert_eq!(parts_sent(&requests), vec![1, 2, 3]);
    assert_eq!(env.stored(&seg).await.as_deref(), Some(&data[..]));
    assert!(env.journal.load("orders", 13).await.is_none());
    assert_eq!(env.open_uploads().await, Vec::<String>::new());
}
